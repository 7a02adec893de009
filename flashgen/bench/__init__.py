"""The benchmark suite (`flashgen bench`): flashgen's kernels against PyTorch SDPA's
backends, FlexAttention and standard attention, in one process on one GPU.

grid.py      a spec's mask and bias over the index grid, in row chunks: visible fraction,
             causal/dense detection, explicit SDPA masks
flops.py     the FlashAttention FLOP convention
flex.py      a spec as FlexAttention's score_mod / mask_mod
peers.py     how each peer runs a case (or why it cannot)
timing.py    CUDA-event timing and peak extra memory
suite.py     the cases (size grid, long-N sweep, quick grid) and the run loop
report.py    the terminal table, CSV, meta.json and plots
command.py   the `flashgen bench` / `flashgen bench-plot` command lines"""


class BenchError(Exception):
    """A bench command cannot run as asked (no GPU, an unknown peer, ...): one line."""


class NotExpressible(Exception):
    """A peer cannot express the case; the message says why (recorded as n/a)."""
