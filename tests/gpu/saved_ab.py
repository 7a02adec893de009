"""A/B of what a forward pass keeps for the backward (launch.SAVE_*): delta from O in the
input dtype (SAVE_NOTHING, what dq / dk / dv use without dropout) against O in fp32
(SAVE_F32_OUT), forward+backward in one process on one GPU, on the benchmark suite's own
inputs (B * N = 16k, H = 16, d = 128), the two modes interleaved over rounds; FlexAttention
and cuDNN in the same process where asked. PERF.md, issue 8's eleventh and twenty-fourth steps.

    PYTHONPATH=$PWD python tests/gpu/saved_ab.py [--specs a,b] [--sizes 2048,8192] [--flex a,b]
"""
import argparse
import statistics

import torch

import flashgen.api as api
from flashgen.bench import suite
from flashgen.bench.flops import attention_flops, tflops
from flashgen.bench.peers import runner
from flashgen.bench.timing import time_ms
from flashgen.progress import Progress
from flashgen.runtime import launch

MODES = {"bf16 O": launch.SAVE_NOTHING, "fp32 O": launch.SAVE_F32_OUT}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--specs", default="causal,sliding_window,document,block_layout,key_padding,"
                                       "prefix_lm,dense")
    ap.add_argument("--sizes", default="2048,8192")
    ap.add_argument("--flex", default="sliding_window,document,block_layout",
                    help="specs whose FlexAttention f+b runs beside")
    ap.add_argument("--cudnn", default="causal,dense")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--d", type=int, default=128)
    args = ap.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    cases = suite.grid_cases(args.specs.split(","), sizes, ["bf16"], [args.d], [])
    suite.build_kernels(cases, Progress())
    original = api._saved_for_backward
    rows = []
    for case in cases:
        op = api.compile(case.source)
        subject = suite._subject(case, op, torch.device("cuda"))
        dout = torch.randn_like(subject.call.q)
        flops = attention_flops(case.B, case.H, case.q_len, case.N, case.d, case.d,
                                subject.visibility.fraction, "fwd+bwd")
        fn = suite._direction_fn(runner("flashgen", subject).forward, "fwd+bwd", subject, dout)
        times = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for mode, saved in MODES.items():
                api._saved_for_backward = lambda *a, s=saved, **kw: s
                times[mode].append(time_ms(fn, warmup=3, reps=30, max_seconds=1.0).median_ms)
        api._saved_for_backward = original
        row = {m: statistics.median(t) for m, t in times.items()}
        peers = [p for p, names in (("flex", args.flex), ("cudnn", args.cudnn))
                 if case.spec in names.split(",")]
        for peer in peers:
            try:
                pf = suite._direction_fn(runner(peer, subject).forward, "fwd+bwd", subject, dout)
                row[peer] = time_ms(pf, warmup=3, reps=30, max_seconds=1.0).median_ms
            except Exception as error:  # noqa: BLE001 (a peer that cannot run is a result)
                print(f"{case.label()}: {peer}: {str(error).splitlines()[0][:120]}")
        rows.append((case, flops, row))
        print(case.label(), {k: round(v, 3) for k, v in row.items()}, flush=True)
        del subject, fn
        suite._free_memory()
    print(f"\n{'case':34s} {'bf16 O':>8s} {'fp32 O':>8s} {'gain':>6s} "
          f"{'TF bf16':>8s} {'TF fp32':>8s} {'peer':>6s} {'peer ms':>8s} {'x peer':>6s}")
    for case, flops, row in rows:
        a, b = row["bf16 O"], row["fp32 O"]
        peer = next((p for p in ("flex", "cudnn") if p in row), None)
        tail = (f"{peer:>6s} {row[peer]:8.3f} {row[peer] / a:6.2f}" if peer else "")
        print(f"{case.spec + ' N=' + str(case.N):34s} {a:8.3f} {b:8.3f} {b / a - 1:+6.1%} "
              f"{tflops(flops, a):8.1f} {tflops(flops, b):8.1f} {tail}")


if __name__ == "__main__":
    main()
