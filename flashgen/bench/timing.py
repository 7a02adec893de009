"""Timing with CUDA events and peak memory, as the peers' own benchmarks measure them.

Each timed run is bracketed by two events, after the L2 cache is cleared by writing a
256 MiB buffer (as triton.testing.do_bench does): runs do not find the previous run's
inputs in L2, and the GPU is busy with the clearing while the CPU issues the run, so
launch overhead stays out of short runs. The result is the median over the runs.

Before the timed runs, fn runs for `settle_seconds` of wall time. An H100 under a long
forward draws its 700 W cap within 50-200 ms of a cool start, and its clock then drops
until per-call times are 8-12 % longer (PERF.md, "the power cap"): a measurement of 20
runs that starts cool is timed at boost clocks, one that follows another subject's runs
at capped clocks, so two subjects' ratio depended on their order. Settled, every subject
is timed in the state a training loop runs in.

A short run (under SHORT_RUN_MS of GPU time) whose issue takes the CPU longer than the
clearing covers (a Python op's argument checks and launches: 50-200 us) would be timed with
the GPU waiting for its launch inside the events. There the GPU is also held busy by a
spin (`torch.cuda._sleep`) for three times the issue's CPU time, so that the events bracket
GPU work only, as they do for long runs (PERF.md, "one consumer in the lean instance": the
same one-tile decoding kernel read 0.035-0.164 ms from run to run without it)."""
from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

L2_CLEAR_BYTES = 256 << 20
# the cap is reached within 0.2 s at dense N = 8192; lighter runs (dense N = 2048, ~600 W)
# still drift 1-2 % slower after 0.4 s, a residue this leaves
SETTLE_SECONDS = 0.4
# runs shorter than this get the spin before them when their issue outlasts the clearing's
# cover; longer ones heat the GPU, and a spin (an idle SM array) between them would not
SHORT_RUN_MS = 0.3
ISSUE_COVERED_S = 50e-6    # the clearing (~90 us) and the start event leave this much
SPIN_CYCLES_PER_S = 2.0e9  # at least the SM clock (H100 1.98 GHz): a slower clock spins longer
MAX_SPIN_S = 5e-3


@dataclass(frozen=True)
class Timing:
    median_ms: float
    q1_ms: float               # quartiles: the spread of the runs
    q3_ms: float
    reps: int


@functools.cache
def _l2_buffer(device: torch.device) -> torch.Tensor:
    return torch.empty(L2_CLEAR_BYTES // 4, dtype=torch.int32, device=device)


def time_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 20, max_seconds: float = 1.0,
            device=None, settle_seconds: float = SETTLE_SECONDS) -> Timing:
    """fn's GPU time: `warmup` untimed runs, more untimed runs (each after the L2 clear,
    as the timed ones) until settle_seconds have passed, then up to `reps` timed ones (at
    least 3), fewer when they would take longer than max_seconds together."""
    device = torch.device(device or torch.cuda.current_device())
    clear = _l2_buffer(device)
    issue_s = []  # the CPU's time to issue a run
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        fn()
        issue_s.append(time.perf_counter() - t0)
    if settle_seconds > 0:
        _settle(fn, clear, settle_seconds, device)

    def timed(n: int, spin_cycles: int = 0) -> list[float]:
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                 for _ in range(n)]
        for start, end in pairs:
            clear.zero_()
            if spin_cycles:
                torch.cuda._sleep(spin_cycles)
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in pairs]
    # (torch.cuda._sleep is private: without it, no spin)
    spin = issue_spin_cycles(statistics.median(issue_s)) if hasattr(torch.cuda, "_sleep") else 0
    times = timed(1, spin)
    if times[0] >= SHORT_RUN_MS:
        spin = 0
    n = max(2, min(reps - 1, int(max_seconds * 1e3 / max(times[0], 1e-3))))
    times += timed(n, spin)
    q1, _, q3 = statistics.quantiles(times, n=4)
    return Timing(statistics.median(times), q1, q3, len(times))


def issue_spin_cycles(issue_seconds: float) -> int:
    """Cycles of the spin before a short run whose issue takes the CPU issue_seconds: none
    where the clearing covers it, else three times it (at most MAX_SPIN_S)."""
    if issue_seconds <= ISSUE_COVERED_S:
        return 0
    return int(min(3 * issue_seconds, MAX_SPIN_S) * SPIN_CYCLES_PER_S)


def _settle(fn: Callable[[], object], clear: torch.Tensor, seconds: float,
            device: torch.device) -> None:
    """Untimed runs for `seconds`, back to back in batches of ~20 ms of GPU work: a wait after
    each run would leave the GPU idle for every launch, drawing less than a loop of runs
    (measured: a settle that waited after each run left the clock between cool and capped),
    and a wait per batch keeps the CPU from queueing far past the deadline."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    clear.zero_()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    batch = max(1, int(20.0 / max(start.elapsed_time(end), 1e-3)))
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        for _ in range(batch):
            clear.zero_()
            fn()
        torch.cuda.synchronize(device)


def peak_extra_bytes(fn: Callable[[], object], device=None) -> int:
    """The most memory fn holds at once beyond what was allocated before it (inputs,
    setup), outputs and gradients included."""
    device = torch.device(device or torch.cuda.current_device())
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return peak
