"""The command line: flashgen check | generate | list | demo."""
from __future__ import annotations

import argparse
import sys

from . import api, resources
from .ir.pretty import format_spec
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
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 1
    except (api.SpecNotFound, ArgumentError, OSError) as err:
        print(f"flashgen: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
