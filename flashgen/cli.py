"""The command line: flashgen check | generate | list | demo | build | explain."""
from __future__ import annotations

import argparse
import re
import sys

from . import api, resources
from .ir.pretty import format_spec
from .build.cache import BuildError
from .runtime.arguments import ArgumentError
from .spec.errors import SpecError


def _warn(warnings) -> None:
    for w in warnings:
        print(w.format(), file=sys.stderr)


def cmd_check(args) -> int:
    specs, warnings = api.load_all(args.spec)
    _warn(warnings)
    if args.name:
        specs = [api.load(args.spec, args.name)]
    for s in specs:
        if args.ir:
            print(format_spec(s))
        else:
            parts = [f"head_dim {','.join(map(str, s.head_dims))}", "/".join(s.dtypes)]
            if s.mask is not None:
                parts.append("mask")
            if s.score is not None:
                parts.append("score")
            if s.dropout:
                parts.append("dropout")
            if s.block_sparse is not None:
                parts.append(f"block_sparse {s.block_sparse.pattern}")
            print(f"ok  {s.name}  ({', '.join(parts)})")
    return 0


def cmd_generate(args) -> int:
    _, warnings = api.load_all(args.spec)
    _warn(warnings)
    for path in api.generate(args.spec, args.output, name=args.name):
        print(path)
    return 0


def cmd_list(args) -> int:
    if args.builtins:
        print(resources.prelude_path().read_text(), end="")
        return 0
    for name, path in api.shipped().items():
        print(f"{name}\t{path}")
    return 0


def cmd_demo(args) -> int:
    """Show a spec's path through the compiler and run it on random inputs."""
    import torch

    from .render.variant import render_variant
    from .runtime.examples import example_inputs
    op = api.compile(args.spec, args.name)
    spec = op.spec
    print(f"== the checked spec (helpers expanded)\n{format_spec(spec)}\n")
    print("== generated CUDA (variant.cuh; `flashgen generate` writes it)")
    print(render_variant(spec, "<demo>"))
    gen = torch.Generator().manual_seed(0)
    q, k, v, params, layout = example_inputs(spec, B=2, Hq=4, Hkv=2, Nq=300, Nk=300,
                                             dtype=torch.float32, generator=gen)
    extra = {"dropout_p": 0.1, "seed": 0} if spec.dropout else {}
    print(f"== the reference on the CPU: q {tuple(q.shape)}, k/v {tuple(k.shape)}"
          + (f", params {', '.join(params)}" if params else ""))
    out, lse = op.reference(q, k, v, return_lse=True, layout=layout, dtype=torch.float64,
                            **extra, **params)
    print(f"out {tuple(out.shape)}  mean {out.mean():+.5f}  std {out.std():.5f}")
    print(f"lse {tuple(lse.shape)}  finite rows {int(torch.isfinite(lse).sum())}/{lse.numel()}")
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if "bf16" in spec.dtypes else torch.float16
        cuda = [t.to("cuda", dtype) for t in (q, k, v)]
        params = {n: (p.cuda() if isinstance(p, torch.Tensor) else p) for n, p in params.items()}
        try:
            got = op(*cuda, layout=layout.cuda() if layout is not None else None,
                     **extra, **params)
            err = (got.double().cpu() - out).abs().max()
            print(f"== the kernel on {torch.cuda.get_device_name()}: max |kernel - ref64| {err:.2e}")
        except NotImplementedError as e:
            print(f"== the kernel: {e}")
    else:
        print("== no CUDA device here: the kernel runs where one is")
    return 0


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def cmd_build(args) -> int:
    """Build the kernel modules (forward + backward per dtype and head dim) and time them."""
    import time
    start = time.perf_counter()
    built = api.build(args.spec, args.name, dtypes=args.dtype and args.dtype.split(","),
                      head_dims=args.head_dim and _int_list(args.head_dim), arch=args.arch)
    for dtype, d, m in built:
        how = "cached" if m.cached else f"built in {m.seconds:.1f} s"
        print(f"{dtype} d{d}: {how}  {m.path}")
    print(f"{len(built)} module(s) in {time.perf_counter() - start:.1f} s wall "
          f"({sum(not m.cached for _, _, m in built)} built)")
    if args.load:
        for dtype, d, m in built:
            t = time.perf_counter()
            m.library()
            print(f"{dtype} d{d}: loaded in {(time.perf_counter() - t) * 1e3:.1f} ms")
    return 0


def cmd_explain(args) -> int:
    """Tile plans, tile classification and ptxas's resource report, with no GPU."""
    spec = api.load(args.spec, args.name)
    print(f"attention {spec.name}")
    if spec.mask is not None:
        print("tile classes: the mask is classified per (Q tile, KV tile) by interval analysis "
              "(skip / full / partial)")
    for dtype, d, plan, report in api.explain(
            args.spec, args.name, dtypes=args.dtype and args.dtype.split(","),
            head_dims=args.head_dim and _int_list(args.head_dim), arch=args.arch):
        print(f"\n{dtype} head_dim {d} value_dim {plan.value_dim} ({args.arch})")
        for line in plan.describe():
            print(f"  {line}")
        for kernel, r in sorted(report.items()):
            print(f"  {_kernel_label(kernel):30s}: {r['registers']} registers, {r['spill_stores']} B spill stores, "
                  f"{r['spill_loads']} B spill loads, {r['stack']} B stack, "
                  f"{r['smem_static']} B static smem")
    return 0


def _kernel_label(kernel: str) -> str:
    """A ptxas kernel name as `explain` shows it: the pass and its compile-time flags
    (the trailing bool template arguments of templates/kernels/*.cuh)."""
    flags = re.findall(r"\b(true|false)\b", kernel)
    if "forward_kernel" in kernel:
        return "forward" + (" +dropout" if flags[-1:] == ["true"] else "")
    if "backward_kernel" in kernel:
        dq, dropout = flags[-2:]
        return ("backward" + (" (dQ atomics)" if dq == "true" else " (dK, dV)")
                + (" +dropout" if dropout == "true" else ""))
    if "delta_kernel" in kernel:
        return "backward delta = rowsum(dO O)"
    if "dq_kernel" in kernel:
        return "deterministic dQ" + (" +dropout" if flags[-1:] == ["true"] else "")
    return kernel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="flashgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="check a spec; errors name file:line:col")
    p.add_argument("spec", help="a spec file, or the name of a shipped spec")
    p.add_argument("--name", help="only this attention block")
    p.add_argument("--ir", action="store_true", help="print the checked spec, helpers expanded")
    p.set_defaults(run=cmd_check)
    p = sub.add_parser("generate", help="write the CUDA sources of a spec")
    p.add_argument("spec")
    p.add_argument("-o", "--output", default="generated", help="folder (default: generated)")
    p.add_argument("--name", help="only this attention block")
    p.set_defaults(run=cmd_generate)
    p = sub.add_parser("list", help="the shipped specs, NAME<TAB>PATH")
    p.add_argument("--builtins", action="store_true", help="print the built-in helpers instead")
    p.set_defaults(run=cmd_list)
    p = sub.add_parser("demo", help="a spec's path through the compiler, run on random inputs")
    p.add_argument("spec", nargs="?", default="alibi")
    p.add_argument("--name")
    p.set_defaults(run=cmd_demo)
    for command, run, help_text in (
            ("build", cmd_build, "compile a spec's kernels into the cache; print build times"),
            ("explain", cmd_explain, "tile plans and ptxas registers/spills/smem (no GPU)")):
        p = sub.add_parser(command, help=help_text)
        p.add_argument("spec")
        p.add_argument("--name")
        p.add_argument("--dtype", help="e.g. bf16 (default: every dtype of the spec)")
        p.add_argument("--head-dim", help="e.g. 64,128 (default: every head dim of the spec)")
        p.add_argument("--arch", default="sm_90a" if command == "explain" else None,
                       help="sm_80, sm_90a, ... (build: default the GPU's)")
        if command == "build":
            p.add_argument("--load", action="store_true", help="also time loading each module")
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 1
    except (api.SpecNotFound, ArgumentError, OSError, BuildError) as err:
        print(f"flashgen: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
