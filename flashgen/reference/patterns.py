"""Block-sparse layouts of the built-in patterns, as bool tensors [1, q_blocks, kv_blocks].

Block (i, j) is True when query block i may attend to key block j. These tensors are
the definition of each pattern; kernels get their block lists from them."""
from __future__ import annotations

import torch

from ..ir.nodes import BlockSparse
from .philox import philox4x32_10

BIGBIRD_STREAM = 0x42494742     # 'BIGB': c2 of the Philox counters that pick random blocks


def _grid(q_blocks: int, kv_blocks: int, device):
    i = torch.arange(q_blocks, device=device).view(-1, 1)
    j = torch.arange(kv_blocks, device=device).view(1, -1)
    return i, j


def butterfly(q_blocks: int, kv_blocks: int, device=None) -> torch.Tensor:
    """The flat butterfly of the FlashAttention paper (from Pixelated Butterfly):
    the diagonal plus every pair whose block indices differ in exactly one bit."""
    i, j = _grid(q_blocks, kv_blocks, device)
    x = i ^ j
    return ((x & (x - 1)) == 0).unsqueeze(0)     # x == 0 (diagonal) or a power of two


def strided(q_blocks: int, kv_blocks: int, stride: int, device=None) -> torch.Tensor:
    """Sparse Transformer's strided pattern: a local band of `stride` blocks and every
    `stride`-th block (combine with `mask = causal` for the autoregressive form)."""
    i, j = _grid(q_blocks, kv_blocks, device)
    return (((i - j).abs() < stride) | ((i - j) % stride == 0)).unsqueeze(0)


def bigbird(q_blocks: int, kv_blocks: int, window: int, global_: int, random: int, seed: int,
            device=None) -> torch.Tensor:
    """BigBird: a band of `window` blocks on each side, the first `global_` block rows and
    columns, and `random` blocks per row drawn with Philox4x32-10 keyed by `seed`
    (counter (row, draw, 'BIGB', 0), block = first output mod kv_blocks; draws may repeat)."""
    i, j = _grid(q_blocks, kv_blocks, device)
    layout = ((i - j).abs() <= window) | (i < global_) | (j < global_)
    if random and kv_blocks:
        rows = torch.arange(q_blocks, dtype=torch.int64, device=device).view(-1, 1)
        draws = torch.arange(random, dtype=torch.int64, device=device).view(1, -1)
        word = philox4x32_10((rows, draws, BIGBIRD_STREAM, 0),
                             (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF))[0]
        picked = torch.zeros(q_blocks, kv_blocks, dtype=torch.bool, device=device)
        picked.scatter_(1, word % kv_blocks, True)
        layout = layout | picked
    return layout.unsqueeze(0)


def block_counts(block_sparse: BlockSparse, nq: int, nk: int) -> tuple[int, int]:
    return -(-nq // block_sparse.block_q), -(-nk // block_sparse.block_k)


def fixed_layout(block_sparse: BlockSparse, nq: int, nk: int, device=None) -> torch.Tensor:
    """The layout of a built-in pattern for sequence lengths (nq, nk)."""
    qb, kb = block_counts(block_sparse, nq, nk)
    o = dict(block_sparse.options)
    if block_sparse.pattern == "butterfly":
        return butterfly(qb, kb, device)
    if block_sparse.pattern == "strided":
        return strided(qb, kb, o["stride"], device)
    if block_sparse.pattern == "bigbird":
        return bigbird(qb, kb, o["window"], o["global"], o["random"], o["seed"], device)
    raise ValueError(f"'{block_sparse.pattern}' is a runtime layout, not a fixed pattern")
