"""The forward and backward under a replaced forward plan (switch_ab.py's plan switch)
against the oracle, outputs poisoned: a tile the planner does not choose yet is checked
before its timings are read.

    PYTHONPATH=$PWD python tests/gpu/plan_smoke.py block_n=176,kv_stages=2,q_slots=1,o_stage=0 \
        [specs] [head dims]

Per spec and head dim three calls: more units than SMs (bf16, 2 x 8 heads x 2048), GQA
4:2 at 1500 x 1700 (fp16; square for the document mask), and one short call (333 x 999):
each leaves a partial last K/V tile at a BN that does not divide it."""
from __future__ import annotations

import os
import sys
import zlib

os.environ.setdefault("FLASHGEN_POISON", "1")

import flashgen  # noqa: E402
from tests.gpu import switch_ab  # noqa: E402
from tests.gpu.oracle import compare  # noqa: E402

SPECS = "dense,causal,sliding_window,key_padding,document,alibi,softcap,prefix_lm,dropout_causal"
SQUARE = {"document"}   # its parameter is one document id per token of both sides
DROPOUT_P = 0.25        # a dropout spec runs with dropout on (bit-exact against the reference)


def calls(name: str, d: int):
    """(dtype, head dim, B, query heads, KV heads, Nq, Nk) of the smoke's calls."""
    for dtype, b, hq, hkv, nq, nk in (("bf16", 2, 8, 8, 2048, 2048), ("fp16", 3, 4, 2, 1500, 1700),
                                      ("bf16", 1, 2, 2, 333, 999)):
        yield dtype, d, b, hq, hkv, nq, nq if name in SQUARE else nk


def main(argv: list[str]) -> int:
    fields = argv[0]
    specs = (argv[1] if len(argv) > 1 else SPECS).split(",")
    dims = [int(x) for x in (argv[2] if len(argv) > 2 else "128").split(",")]
    settings, restore = switch_ab._plan_settings(fields)
    settings[fields]()
    passed = failed = 0
    try:
        for name in specs:
            op = flashgen.compile(name)
            for d in [d for d in dims if d in op.spec.head_dims]:
                for call in calls(name, d):
                    label = repr((name, *call))
                    try:
                        row = compare(op, *call, zlib.crc32(label.encode()), label,
                                      dropout_p=DROPOUT_P if op.spec.dropout else 0.0)
                    except Exception as error:  # noqa: BLE001 (a call that cannot run is a result)
                        print("ERROR", label, type(error).__name__, str(error)[:200], flush=True)
                        failed += 1
                        continue
                    ok = not row["failures"]
                    passed, failed = passed + ok, failed + (not ok)
                    print("ok  " if ok else "FAIL", label,
                          {k: v for k, v in row.items() if k != "case"}, flush=True)
    finally:
        restore()
    print(f"plan smoke {fields}: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
