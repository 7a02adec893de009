"""Timing with CUDA events and peak memory, as the peers' own benchmarks measure them.

Each timed run is bracketed by two events, after the L2 cache is cleared by writing a
256 MiB buffer (as triton.testing.do_bench does): runs do not find the previous run's
inputs in L2, and the GPU is busy with the clearing while the CPU issues the run, so
launch overhead stays out of short runs. The result is the median over the runs."""
from __future__ import annotations

import functools
import gc
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

L2_CLEAR_BYTES = 256 << 20


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
            device=None) -> Timing:
    """fn's GPU time: `warmup` untimed runs, then up to `reps` timed ones (at least 3),
    fewer when they would take longer than max_seconds together."""
    device = torch.device(device or torch.cuda.current_device())
    clear = _l2_buffer(device)
    for _ in range(warmup):
        fn()

    def timed(n: int) -> list[float]:
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                 for _ in range(n)]
        for start, end in pairs:
            clear.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in pairs]
    times = timed(1)
    n = max(2, min(reps - 1, int(max_seconds * 1e3 / max(times[0], 1e-3))))
    times += timed(n)
    q1, _, q3 = statistics.quantiles(times, n=4)
    return Timing(statistics.median(times), q1, q3, len(times))


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
