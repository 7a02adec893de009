"""Per-kernel GPU time of one call, flashgen beside its peers (torch.profiler).

    python3 tests/gpu/kernel_times.py --specs document,sliding_window --sizes 2048,8192 \
        --peers flex --direction fwd+bwd

Each case is the suite's (B * N = 16k tokens, hidden 2048, bf16, the suite's parameters and
inputs), each peer's closure the suite's. After a warm-up, the call runs --calls times under
the profiler; every kernel's time is printed as microseconds per call, with the call's loop
time (CUDA events, no profiler) beside the sum. Not a test: a tool for the perf notes, to
say which kernel of a forward+backward holds the time before an optimisation is chosen.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.profiler import ProfilerActivity, profile

import flashgen.api as api
from flashgen.bench import suite
from flashgen.bench.peers import runner


def loop_ms(fn, calls: int) -> tuple[float, float]:
    """(GPU ms a call, host ms a call) of `calls` calls back to back: where the host's
    time to issue a call exceeds the GPU's to run it, the loop is host-bound and the GPU
    idles between the kernels the profiler times."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) * 1e3 / calls
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls, host


def host_profile(fn, calls: int, lines: int) -> str:
    """cProfile of `calls` calls, the functions with the most own time first."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(lines)
    return text.getvalue()


def kernel_rows(fn, calls: int) -> list[tuple[str, float, float]]:
    """(kernel name, launches per call, microseconds per call), longest first."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = [(ev.key, ev.count / calls, ev.device_time_total / calls)
            for ev in prof.key_averages()
            if ev.count > 0 and "CUDA" in str(ev.device_type)]
    return sorted(rows, key=lambda r: -r[2])


def _forward(peer: str, subject):
    """A peer's call; flashgen-det: flashgen with deterministic=True (dQ by its own kernel,
    a Q tile per CTA walking its K/V tiles, instead of fp32 reductions into an accumulator
    that the delta kernel zeroes and a conversion kernel rounds)."""
    if peer == "flashgen-det":
        op, call, kwargs = subject.op, subject.call, subject.op_kwargs
        return lambda: op(call.q, call.k, call.v, deterministic=True, **kwargs)
    return runner(peer, subject).forward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--specs", required=True)
    p.add_argument("--sizes", default="2048,8192")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--peers", default="flex",
                   help="comma list ('' for flashgen alone): the suite's peers, or flashgen-det")
    p.add_argument("--direction", default="fwd+bwd", choices=("fwd", "fwd+bwd"))
    p.add_argument("--decode", metavar="B,ROWS", default=None,
                   help="the decoding sweep's case instead: batch B, ROWS query rows against "
                        "--sizes keys (H = 16; give --direction fwd)")
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--width", type=int, default=90, help="kernel name characters shown")
    p.add_argument("--host-profile", type=int, default=0, metavar="LINES",
                   help="also print flashgen's cProfile, this many functions")
    a = p.parse_args()
    device = torch.device("cuda")
    peers = ["flashgen", *[x for x in a.peers.split(",") if x]]
    specs = a.specs.split(",")
    with ThreadPoolExecutor(max_workers=8) as pool:      # the modules, built side by side
        list(pool.map(lambda s: api.build(s, dtypes=[a.dtype], head_dims=[a.head_dim]), specs))
    for spec in specs:
        for n in [int(x) for x in a.sizes.split(",")]:
            if a.decode:
                batch, rows = (int(x) for x in a.decode.split(","))
                case = suite.decode_cases([spec], [n], [a.dtype], [a.head_dim], [],
                                          rows=[rows], batch=batch)[0]
            else:
                case = suite.grid_cases([spec], [n], [a.dtype], [a.head_dim], [])[0]
            subject = suite._subject(case, api.compile(case.source), device)
            call = subject.call
            dout = torch.randn(call.q.shape[:3] + call.v.shape[3:], dtype=call.q.dtype,
                               device=device)
            for peer in peers:
                fn = suite._direction_fn(_forward(peer, subject), a.direction, subject, dout)
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
                loop, host = loop_ms(fn, 3 * a.calls)
                rows = kernel_rows(fn, a.calls)
                total = sum(r[2] for r in rows)
                print(f"== {spec} d{a.head_dim} N{n} {peer} {a.direction}: loop {loop * 1000:.0f} us, "
                      f"host {host * 1000:.0f} us, kernels {total:.0f} us")
                for name, count, us in rows:
                    print(f"  {us:8.1f} us {100 * us / total:5.1f} % x{count:g}  {name[:a.width]}")
                if peer == "flashgen" and a.host_profile:
                    print(host_profile(fn, a.calls, a.host_profile))
            del subject
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
