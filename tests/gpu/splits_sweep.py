"""Decoding's time against the split count (op(..., kv_splits=s)), bf16; each row gives the
time per count (us) and launch.kv_splits's choice ("auto"). Not a test: the perf notes'
tool for kv_splits's heuristic. The defaults are the first sweep's grid (B = 8, H = 16:
128 CTAs against ~132 SMs); --shapes BxH,... adds batches that leave SMs idle.

    PYTHONPATH=$PWD python tests/gpu/splits_sweep.py [--shapes 1x8,4x16] [--splits 1,2,4]
"""
import argparse, torch, flashgen
from flashgen.bench.timing import time_ms
from flashgen.runtime import launch


def ints(text):
    return [int(x) for x in text.split(",")]


parser = argparse.ArgumentParser()
parser.add_argument("--specs", default="dense,causal_bottom_right")
parser.add_argument("--shapes", default="8x16", help="B x H pairs")
parser.add_argument("--d", type=ints, default=[64, 128])
parser.add_argument("--keys", type=ints, default=[4096, 32768])
parser.add_argument("--rows", type=ints, default=[1, 16])
parser.add_argument("--splits", type=ints, default=[1, 2, 3, 4, 6, 8, 12, 16])
args = parser.parse_args()
torch.manual_seed(0)
for spec in args.specs.split(","):
    op = flashgen.compile(spec)
    for shape in args.shapes.split(","):
        B, H = (int(x) for x in shape.split("x"))
        for d in args.d:
            for nk in args.keys:
                for nq in args.rows:
                    q = torch.randn(B, H, nq, d, device="cuda", dtype=torch.bfloat16)
                    k = torch.randn(B, H, nk, d, device="cuda", dtype=torch.bfloat16)
                    v = torch.randn_like(k)
                    auto = launch.kv_splits(op.key, q, k)
                    row = []
                    for s in sorted(set(args.splits) | {auto}):
                        with torch.no_grad():
                            t = time_ms(lambda: op(q, k, v, kv_splits=s), warmup=3, reps=30,
                                        settle_seconds=0.1).median_ms
                        row.append((s, t * 1000))
                    best = min(row, key=lambda x: x[1])
                    at_auto = dict(row)[auto]
                    print(f"{spec:20s} {B}x{H:<3d} d{d:<4d} Nk={nk:<6d} Nq={nq:<3d} auto={auto:<2d} "
                          + " ".join(f"s{s}={t:.1f}" for s, t in row)
                          + f"  best s{best[0]}  auto/best {at_auto / best[1]:.3f}", flush=True)
