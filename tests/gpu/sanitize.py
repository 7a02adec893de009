"""compute-sanitizer over representative kernels, forward and backward.

    python tests/gpu/sanitize.py                 # memcheck, racecheck (and synccheck)
    python tests/gpu/sanitize.py --tools memcheck
    python tests/gpu/sanitize.py --cases softcap-bf16-d256,causal-bf16-d128

Each tool runs this file's workload (`--workload`) in a child process under
`compute-sanitizer --tool TOOL --error-exitcode 1`: odd sizes that end inside tiles, GQA,
a block-sparse layout and a pattern, dropout, a data-dependent mask (its runtime tile
lists), learned parameters (their warp-reduced gradients), and the deterministic
backward. The modules are built first, outside the sanitizer, so that it sees only the
kernels. Prints one line per tool and exits non-zero when any tool reports an error.
Needs a CUDA GPU and compute-sanitizer (CUDA's bin directory or $CUDA_HOME/bin)."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# (spec, dtype, head dim, B, Hq, Hkv, Nq, Nk, call options)
CASES = [
    ("causal", "fp16", 64, 2, 4, 2, 77, 133, {}),                   # odd sizes, GQA
    ("dense", "bf16", 128, 1, 2, 2, 130, 70, {"deterministic": True}),
    ("alibi", "bf16", 64, 1, 4, 2, 100, 100, {}),                  # learned slopes
    ("document", "fp16", 64, 2, 2, 2, 150, 150, {}),                # runtime tile lists
    ("block_layout", "bf16", 64, 1, 2, 2, 200, 200, {}),            # block-sparse layout
    ("bigbird", "fp16", 64, 1, 2, 2, 200, 200, {}),                 # block-sparse pattern
    ("dropout_causal", "bf16", 64, 1, 2, 2, 90, 90, {"dropout_p": 0.25}),
    ("t5_bias", "fp16", 64, 1, 2, 1, 65, 97, {}),                   # per-element table grads
    # warp-specialised: the d = 256 forward (separate K / V barriers over two stages) with
    # the deterministic dQ kernel on one stage; the d = 128 forward and the backward's
    # producer, dQ bulk adds and three Q/dO stages (300 rows: 5 Q tiles, a partial one)
    ("softcap", "bf16", 256, 1, 2, 1, 200, 330, {"deterministic": True}),
    ("causal", "bf16", 128, 1, 2, 2, 300, 300, {}),
    # d = 64's three consumers (their ring of turn barriers) over three 192-row Q tiles, the
    # last partial, and the deterministic dQ kernel on 96-row halves of them
    ("causal", "bf16", 64, 1, 2, 2, 400, 300, {"deterministic": True}),
    # d = 256's split backward (backward_sm90_split.cuh): its P^T / dS^T halves through two
    # buffers and one named barrier per tile, dQ by atomics; four Q tiles (the last partial)
    ("causal", "fp16", 256, 1, 2, 2, 200, 330, {}),
]


def _case_id(case) -> str:
    name, dtype, d = case[:3]
    return f"{name}-{dtype}-d{d}"


def _compute_sanitizer() -> str:
    found = shutil.which("compute-sanitizer")
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if not found and home and (Path(home) / "bin" / "compute-sanitizer").exists():
            found = str(Path(home) / "bin" / "compute-sanitizer")
    if not found:
        sys.exit("compute-sanitizer not found: put CUDA's bin directory on PATH or set CUDA_HOME")
    return found


def workload(build_only: bool, only: list[str] | None = None) -> None:
    import torch

    import flashgen
    from flashgen.api import build
    from flashgen.runtime.examples import example_layout, example_params
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    gen = torch.Generator().manual_seed(0)
    for case in CASES:
        if only and _case_id(case) not in only:
            continue
        name, dtype, d, B, Hq, Hkv, Nq, Nk, options = case
        if build_only:
            build(name, dtypes=[dtype], head_dims=[d])
            continue
        op = flashgen.compile(name)
        q = torch.randn(B, Hq, Nq, d, generator=gen).to("cuda", dtypes[dtype]).requires_grad_()
        k, v = (torch.randn(B, Hkv, Nk, d, generator=gen).to("cuda", dtypes[dtype])
                .requires_grad_() for _ in range(2))
        params = {n: t.to("cuda") if isinstance(t, torch.Tensor) else t
                  for n, t in example_params(op.spec, B, Hq, Nq, Nk, gen,
                                             with_defaults=True).items()}
        params = {n: t.float().requires_grad_()
                  if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                  for n, t in params.items()}
        layout = example_layout(op.spec, Hq, Nq, Nk, gen, device="cuda")
        if layout is not None:
            options = {**options, "layout": layout}
        out = op(q, k, v, **options, **params)
        out.float().square().sum().backward()
        torch.cuda.synchronize()
        print(f"  {name} {dtype} d{d} {B}x{Hq}:{Hkv} {Nq}x{Nk}: forward and backward ran",
              flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", default="memcheck,racecheck,synccheck")
    parser.add_argument("--cases", default="",
                        help="only these cases, e.g. softcap-bf16-d256,causal-fp16-d64")
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    only = [c for c in args.cases.split(",") if c]
    unknown = set(only) - {_case_id(c) for c in CASES}
    if unknown:
        sys.exit(f"no such case: {', '.join(sorted(unknown))} (cases: "
                 f"{', '.join(_case_id(c) for c in CASES)})")
    if args.workload:
        workload(args.build_only, only)
        return 0
    sanitizer = _compute_sanitizer()
    me = [sys.executable, str(Path(__file__).resolve()), "--workload"]
    if only:
        me += ["--cases", ",".join(only)]
    if subprocess.run(me + ["--build-only"], check=False).returncode != 0:
        sys.exit("building the cases' modules failed (the error is above); no sanitizer ran")
    failed = 0
    for tool in args.tools.split(","):
        start = time.time()
        run = subprocess.run([sanitizer, "--tool", tool, "--error-exitcode", "1",
                              "--print-limit", "20", *me], capture_output=True, text=True,
                             check=False)
        summary = [line for line in run.stdout.splitlines() if "ERROR SUMMARY" in line
                   or "RACECHECK SUMMARY" in line]
        verdict = "clean" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
        print(f"{tool}: {verdict}, {len(only) or len(CASES)} cases, {time.time() - start:.0f} s; "
              + ("; ".join(s.replace("=========", "").strip() for s in summary) or "no summary"))
        if run.returncode != 0:
            failed += 1
            print(run.stdout[-6000:], run.stderr[-3000:], sep="\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
