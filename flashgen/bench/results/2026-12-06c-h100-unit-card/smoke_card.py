"""The persistent forward (and its backward) against the oracle on calls with more units
than SMs: the unit cards and tickets exercised."""
import os, sys, zlib
os.environ.setdefault("FLASHGEN_POISON", "1")
from concurrent.futures import ThreadPoolExecutor
import torch
import flashgen
from flashgen.runtime import launch
from tests.gpu.oracle import compare, DTYPES
specs = sys.argv[1].split(",") if len(sys.argv) > 1 else [
    "dense", "causal", "sliding_window", "key_padding", "document", "alibi", "softcap", "prefix_lm"]
cases = []
for name in specs:
    for d in [d for d in (64, 128) if d in flashgen.load(name).head_dims]:
        cases.append((name, "bf16", d, 2, 8, 8, 2048, 2048))
        cases.append((name, "fp16", d, 3, 4, 2, 1500, 1500 if name in ("document",) else 1700))
arch = launch._arch(torch.cuda.current_device())
ops = {n: flashgen.compile(n) for n in specs}
todo = {(ops[c[0]].key, DTYPES[c[1]], c[2]) for c in cases}
with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
    list(pool.map(lambda t: launch.module(*t, arch), sorted(todo, key=str)))
bad = 0
for c in cases:
    name, dt, d, B, Hq, Hkv, Nq, Nk = c
    try:
        row = compare(ops[name], dt, d, B, Hq, Hkv, Nq, Nk, zlib.crc32(repr(c).encode()), repr(c))
    except Exception as e:  # a spec whose params want square shapes, ...
        print("ERROR", c, type(e).__name__, str(e)[:200]); bad += 1; continue
    ok = not row["failures"]
    bad += not ok
    print("ok  " if ok else "FAIL", c, {k: v for k, v in row.items() if k not in ("case",)}, flush=True)
print(f"smoke: {len(cases) - bad} passed, {bad} failed")
