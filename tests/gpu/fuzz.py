"""Differential fuzzing on the GPU: random valid specs (tests/specgen.py) compiled and
run against their reference through the oracle of oracle.py, forward and backward.

    python tests/gpu/fuzz.py --start 0 --count 500 --out DIR    # the long run
    python tests/gpu/fuzz.py --start 1234 --count 1 --show      # reproduce one seed

Every module is built first, in parallel (one nvcc per core); then each case runs on
fresh random inputs with poisoned outputs. A case fails when the oracle fails or when
anything raises (a build error, a CUDA error, a wrong message). Writes DIR/fuzz.json
(one row per case) and prints the counts last: the README's reliability section keeps
them. tests/gpu/test_fuzz.py runs a fixed set of these seeds in the GPU suite."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):           # run as a script from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import flashgen
from flashgen.build.cache import quiet
from flashgen.runtime import launch
from tests.gpu.oracle import DTYPES, compare
from tests.specgen import FuzzCase, random_case


# A module's build may take this long before it fails its case (FLASHGEN_BUILD_TIMEOUT,
# flashgen/build/cache.py). Seed 47's build once ran past eight minutes (ptxas on its
# forward), and with no limit the suite waited on it until its call's time ran out, every
# other case unreported.
BUILD_TIME_LIMIT_S = 300


def build_all(cases: list[FuzzCase], workers: int | None = None) -> dict[int, str]:
    """Build every case's module in parallel; {seed: error text} for those that failed,
    a build past BUILD_TIME_LIMIT_S among them (unless FLASHGEN_BUILD_TIMEOUT says else)."""
    arch = launch._arch(torch.cuda.current_device())

    def one(case):
        try:
            op = flashgen.compile(case.text)
            launch.module(op.key, DTYPES[case.dtype], case.head_dim, arch)
            return case.seed, None
        except Exception as e:  # noqa: BLE001  (a failed build is a failed case, not a stop)
            return case.seed, f"{type(e).__name__}: {str(e)[:2000]}"
    # the limit holds for these builds only: set for the process, it would also stop the
    # modules of any test that runs after the fuzz suite in the same pytest session
    unset = "FLASHGEN_BUILD_TIMEOUT" not in os.environ
    os.environ.setdefault("FLASHGEN_BUILD_TIMEOUT", str(BUILD_TIME_LIMIT_S))
    try:
        # hundreds of modules: the caller reports the count, not a line per build
        with quiet(), ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 4) as pool:
            return {seed: err for seed, err in pool.map(one, cases) if err is not None}
    finally:
        if unset:
            del os.environ["FLASHGEN_BUILD_TIMEOUT"]


def run_case(case: FuzzCase) -> dict:
    """One case through the oracle: its report row, with "failures" empty when it passed."""
    try:
        op = flashgen.compile(case.text)
        row = compare(op, case.dtype, case.head_dim, case.B, case.Hq, case.Hkv, case.Nq,
                      case.Nk, case.seed, case.describe(), dropout_p=case.dropout_p,
                      deterministic=case.deterministic)
    except Exception as e:  # noqa: BLE001  (any error fails the case)
        row = {"case": case.describe(), "failures": [
            f"{type(e).__name__}: {e}".strip()[:2000] + "\n" + traceback.format_exc(limit=3)]}
    row["seed"] = case.seed
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--show", action="store_true", help="print each spec's text")
    args = parser.parse_args(argv)
    os.environ["FLASHGEN_POISON"] = "1"
    cases = [random_case(s) for s in range(args.start, args.start + args.count)]
    t0 = time.time()
    build_errors = build_all(cases)
    print(f"built {len(cases)} modules in {time.time() - t0:.0f} s "
          f"({len(build_errors)} failed)", flush=True)
    rows = []
    for i, case in enumerate(cases):
        if args.show:
            print(case.text)
        if case.seed in build_errors:
            row = {"case": case.describe(), "seed": case.seed,
                   "failures": [f"build: {build_errors[case.seed]}"]}
        else:
            row = run_case(case)
        rows.append(row)
        status = "FAIL " + "; ".join(f.splitlines()[0] for f in row["failures"]) \
            if row["failures"] else "ok"
        if row["failures"] or args.show or (i + 1) % 50 == 0:
            print(f"[{i + 1}/{len(cases)}] {case.describe()}: {status}", flush=True)
    failed = [r for r in rows if r["failures"]]
    worst = max((v for r in rows for k, v in r.items() if isinstance(v, float)), default=0.0)
    summary = {"tried": len(rows), "failed": len(failed), "seeds": [args.start, args.start + args.count],
               "failed_seeds": [r["seed"] for r in failed], "worst_error_over_bound": worst,
               "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "seconds": round(time.time() - t0)}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fuzz.json").write_text(json.dumps({"summary": summary, "cases": rows}, indent=1))
    print(f"fuzz: seeds {args.start}..{args.start + args.count - 1}: {len(rows)} tried, "
          f"{len(failed)} failed, worst error/bound {worst:.3f}, {summary['seconds']} s on "
          f"{summary['gpu']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
