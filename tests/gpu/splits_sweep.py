"""Decoding's time against the split count (op(..., kv_splits=s)): dense and
causal_bottom_right, B = 8, H = 16, bf16, d = 64 / 128, 4k / 32k keys, one / sixteen query
rows; each row gives the time per count and launch.kv_splits's choice ("auto"). Not a test:
the perf notes' tool for kv_splits's heuristic.

    PYTHONPATH=$PWD python tests/gpu/splits_sweep.py
"""
import statistics, torch, flashgen
from flashgen.bench.timing import time_ms
from flashgen.runtime import launch
torch.manual_seed(0)
for spec in ("dense", "causal_bottom_right"):
    op = flashgen.compile(spec)
    for d in (64, 128):
        for nk in (4096, 32768):
            for nq in (1, 16):
                q = torch.randn(8, 16, nq, d, device="cuda", dtype=torch.bfloat16)
                k = torch.randn(8, 16, nk, d, device="cuda", dtype=torch.bfloat16)
                v = torch.randn_like(k)
                auto = launch.kv_splits(op.key, q, k)
                row = []
                for s in (1, 2, 3, 4, 6, 8, 12, 16):
                    with torch.no_grad():
                        t = time_ms(lambda: op(q, k, v, kv_splits=s), warmup=3, reps=30,
                                    settle_seconds=0.1).median_ms
                    row.append((s, t * 1000))
                best = min(row, key=lambda x: x[1])
                print(f"{spec:20s} d{d:<4d} Nk={nk:<6d} Nq={nq:<3d} auto={auto:<2d} " +
                      " ".join(f"s{s}={t:.1f}" for s, t in row) + f"  best s{best[0]}", flush=True)
