"""The command line: flashgen check | generate | list | demo | build | explain | bench |
bench-plot."""
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
                      head_dims=args.head_dim and _int_list(args.head_dim), arch=args.arch,
                      shards=args.shards)
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


def cmd_cache(args) -> int:
    """The kernel cache: list its modules, or clear them (all, or those matching a glob)."""
    import datetime

    from .build import cache
    root = cache.cache_dir()
    if args.action == "list":
        modules = cache.cached_modules(root)
        total = sum(m.bytes for m in modules)
        print(f"{root}: {len(modules)} module(s), {total / 2**20:.1f} MiB")
        for m in modules:
            when = datetime.datetime.fromtimestamp(m.modified).strftime("%Y-%m-%d %H:%M")
            state = "" if m.intact else "  corrupt (rebuilt on next use)"
            print(f"  {m.name:40s} {m.key}  {m.bytes / 2**20:6.1f} MiB  {when}{state}")
        return 0
    removed, skipped = cache.clear(args.pattern, root)
    print(f"{root}: removed {len(removed)} module(s), "
          f"{sum(m.bytes for m in removed) / 2**20:.1f} MiB")
    for name in skipped:
        print(f"  kept {name}: another process is building it")
    return 0


# The call `explain` models and times: B x Nq = 16k tokens, H = 2048 / d heads.
EXPLAIN_TOKENS = 16384
EXPLAIN_WIDTH = 2048


def _sizes(text: str) -> tuple[int, int]:
    """--sizes: NQ (and Nk = Nq) or NQxNK."""
    try:
        sizes = [int(x) for x in text.lower().split("x")]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"give NQ or NQxNK, e.g. 8192 or 4096x8192, not {text!r}")
    return sizes[0], sizes[-1]


def cmd_explain(args) -> int:
    """Tile plans and ptxas's resource report (no GPU needed); the tile map and the IO
    model at --sizes; with --measure on a GPU, the op timed beside the model."""
    import torch

    from .analysis.affine import affine_bias
    from .ir.pretty import pretty
    from .plan import io_model
    from .plan.tile_map import tile_map
    from .analysis import bounds
    from .runtime.arguments import TORCH_DTYPES
    spec = api.load(args.spec, args.name)
    q_len, kv_len = args.sizes
    batch = args.batch or max(1, EXPLAIN_TOKENS // q_len)
    explained = api.explain(args.spec, args.name, dtypes=args.dtype and args.dtype.split(","),
                            head_dims=args.head_dim and _int_list(args.head_dim), arch=args.arch)
    print(f"attention {spec.name}")
    affine = affine_bias(spec)
    if affine is not None:
        print(f"  score adds a bias affine in kv_idx, growing by {pretty(affine.step)} per key: "
              f"the forward takes it once per row and tile, one FFMA per score "
              f"(flashgen/analysis/affine.py)")
        if affine.q_step is not None:
            print(f"  and affine in q_idx, growing by {pretty(affine.q_step)} per query row: "
                  f"the sm90 backward takes it once per key and tile where no table wants a "
                  f"gradient")
    for dtype, d, plan, report in explained:
        print(f"\n{dtype} head_dim {d} value_dim {plan.value_dim} ({args.arch})")
        for line in plan.describe():
            print(f"  {line}")
        for kernel, r in sorted(report.items()):
            print(f"  {_kernel_label(kernel):38s}: {r['registers']} registers, {r['spill_stores']} B spill stores, "
                  f"{r['spill_loads']} B spill loads, {r['stack']} B stack, "
                  f"{r['smem_static']} B static smem")

    plans = {d: plan for _, d, plan, _ in explained}
    dtypes = {d: [t for t, d_, _, _ in explained if d_ == d] for d in plans}
    maps = {}           # heads -> the TileMap of the call with that many heads

    def tiles_at(d: int):
        heads = args.heads or max(1, EXPLAIN_WIDTH // d)
        if heads not in maps:
            maps[heads] = tile_map(spec, q_len, kv_len, batch, heads)
        return maps[heads]

    lengths = f"Nq = Nk = {q_len}" if q_len == kv_len else f"Nq = {q_len}, Nk = {kv_len}"
    print(f"\n== tile map at {lengths}: what the kernels do with each (Q tile, KV tile) pair")
    print("   . skipped (never loaded)   # full (no per-element mask)   + partial (mask per element)"
          " or a mix")
    if spec.mask is not None:
        print("   by the kernels' own tile_class() (the mask's static interval analysis), "
              "compiled for the host")
        for index, what in (("kv_idx", "keys a query may see (kv_range)"),
                            ("q_idx", "queries that may see a key (q_range)")):
            solved = bounds.index_range(spec, index)
            if solved is not None:
                print(f"   {what}, the mask solved for {index}: "
                      f"{bounds.describe(solved, index)}")
    for line in tiles_at(next(iter(plans))).describe_inputs():
        print(f"   {line}")
    # one grid per tile size (and per (batch, head) the mask tells apart), with its users
    grids: dict[tuple, tuple] = {}
    for d, plan in plans.items():
        tiles = tiles_at(d)
        for pass_name, tile in (("forward", plan.forward), ("backward", plan.backward)):
            key = (tile.block_m, tile.block_n, tiles.batches, tiles.grid_heads)
            grids.setdefault(key, (tiles, {}))[1].setdefault(pass_name, []).append(d)
    for (block_m, block_n, batches, heads), (tiles, users) in grids.items():
        used = "; ".join(f"{name} at head_dim {', '.join(map(str, ds))}" for name, ds in users.items())
        where = "" if batches * heads == 1 else f"; over B {batches} x H {heads} (picture: the first)"
        print(f"\n{block_m} x {block_n} tiles: {used}{where}")
        for line in tiles.grid(block_m, block_n).describe():
            print(f"  {line}")
    for tiles in {(t.batches, t.grid_heads): t for t in maps.values()}.values():
        if spec.mask is None and tiles.layout is None:
            print("\nvisible fraction of elements: 100 % (no mask)")
            continue
        fraction, step = tiles.visible
        how = "every query row" if step == 1 else f"every {step}th query row"
        over = "" if tiles.batches * tiles.grid_heads == 1 else \
            f" over B {tiles.batches} x H {tiles.grid_heads}"
        print(f"\nvisible fraction of elements{over}: {100 * fraction:.2f} % "
              f"(the exact mask, by the reference evaluator, {how})")

    gpu = torch.cuda.is_available()
    ceilings = io_model.measure_ceilings() if args.measure and gpu else io_model.H100_SXM
    if args.bandwidth or args.tflops:
        ceilings = io_model.Ceilings((args.bandwidth or ceilings.bandwidth / 1e12) * 1e12,
                                     (args.tflops or ceilings.matmul / 1e12) * 1e12,
                                     "--bandwidth / --tflops, else " + ceilings.source)
    print("\n== IO model (FlashAttention paper, Sec. 3.2): HBM bytes per call, no L2 reuse")
    print("   predicted time = max(bytes / bandwidth, FLOPs / matmul rate)")
    print(f"   ceilings: {ceilings.describe()}")
    op = api.compile(args.spec, args.name) if args.measure and gpu else None
    for d, plan in plans.items():
        tiles = tiles_at(d)
        model = io_model.io_model(plan, tiles)
        print(f"\nhead_dim {d}: B {tiles.batch} x H {tiles.heads}, {lengths}")
        for line in model.describe(ceilings):
            print(f"  {line}")
        for dtype in dtypes[d] if op is not None else ():
            forward, both = io_model.measure_call(op, tiles, TORCH_DTYPES[dtype], d)
            predicted_forward, predicted_both = model.forward.predicted(ceilings), model.predicted(ceilings)
            dropout = f" (dropout_p {io_model.MEASURE_DROPOUT_P})" if spec.dropout else ""
            print(f"  {dtype:9s} measured{dropout}: forward {forward:.3g} ms "
                  f"({forward / 1e3 / predicted_forward:.2f}x predicted), forward+backward "
                  f"{both:.3g} ms ({both / 1e3 / predicted_both:.2f}x predicted)")
    if not gpu:
        print("\nno GPU: --measure needs one")
    elif op is None:
        print(f"\n--measure times the op on {torch.cuda.get_device_name()}")
    return 0


def _kernel_label(kernel: str) -> str:
    """A ptxas kernel name as `explain` shows it: the pass and its compile-time flags
    (the trailing bool template arguments of templates/kernels/*.cuh)."""
    # nvcc writes bool template arguments as true/false or (bool)1/(bool)0, by version;
    # only the template arguments count, not the parameter list after them (whose
    # Params type names VariantOf<false>)
    template_args = kernel.split(">(", 1)[0]
    flags = [word or ("true" if digit == "1" else "false")
             for word, digit in re.findall(r"\b(true|false)\b|\(bool\)([01])", template_args)]
    if "forward_kernel" in kernel:
        dropout, exact_p, general = flags[-3:]
        return ("forward" + (" +dropout" if dropout == "true" else "")
                + (" +exact P" if exact_p == "true" else "")
                + (" (varlen / split-KV)" if general == "true" else ""))
    if "backward_kernel" in kernel:
        dq, dropout, param_grads = flags[-3:]
        ws = "backward_kernel_sm90_ws" in kernel  # a padded batch's kernel on sm_90a
        split = "backward_kernel_sm90_split" in kernel  # and at d = 256
        return (("backward, warp-specialised" if ws else
                 "backward, warp-specialised, split head dim" if split else "backward")
                + (" (dK, dV)" if dq != "true" else " (dQ bulk adds)" if ws else " (dQ atomics)")
                + (" +dropout" if dropout == "true" else "")
                + (" +param grads" if param_grads == "true" else ""))
    if "combine_kernel" in kernel:
        return "forward split-KV combine (by lse)"
    if "delta_kernel" in kernel:
        return "backward delta = rowsum(dO O), dQ accumulator zeroed"
    if "dq_convert_kernel" in kernel:
        return "backward dQ, fp32 fragments -> rows"
    if "dq_kernel" in kernel:
        return "deterministic dQ" + (" +dropout" if flags[-1:] == ["true"] else "")
    return kernel


def cmd_bench(args) -> int:
    """Time specs against SDPA's backends, FlexAttention and standard attention
    (flashgen/bench/)."""
    from .bench import BenchError, command
    try:
        return command.bench(args)
    except BenchError as err:
        print(f"flashgen: error: {err}", file=sys.stderr)
        return 1


def cmd_bench_plot(args) -> int:
    """The table and plots of a results folder, on any machine."""
    from .bench import BenchError, command
    try:
        return command.bench_plot(args)
    except BenchError as err:
        print(f"flashgen: error: {err}", file=sys.stderr)
        return 1


def _add_bench_parsers(sub) -> None:
    from .bench.command import add_bench_arguments
    p = sub.add_parser("bench", help="time specs against SDPA (flash, cuDNN, mem-efficient), "
                                     "FlexAttention and standard attention; table, CSV, plots")
    add_bench_arguments(p)
    p.set_defaults(run=cmd_bench)
    p = sub.add_parser("bench-plot", help="table and PNG plots of a bench results folder (no GPU)")
    p.add_argument("folder", help="a results folder of `flashgen bench`")
    p.set_defaults(run=cmd_bench_plot)


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
            ("explain", cmd_explain, "tile plans, ptxas registers/spills/smem, tile map, IO model")):
        p = sub.add_parser(command, help=help_text)
        p.add_argument("spec")
        p.add_argument("--name")
        p.add_argument("--dtype", help="e.g. bf16 (default: every dtype of the spec)")
        p.add_argument("--head-dim", help="e.g. 64,128 (default: every head dim of the spec)")
        p.add_argument("--arch", default="sm_90a" if command == "explain" else None,
                       help="sm_80, sm_90a, ... (build: default the GPU's)")
        if command == "build":
            p.add_argument("--load", action="store_true", help="also time loading each module")
            p.add_argument("--shards", action="store_true",
                           help="the kernels for shards of a sequence (op.ring), not whole calls")
        if command == "explain":
            p.add_argument("--sizes", type=_sizes, default=(4096, 4096),
                           help="NQ or NQxNK for the tile map and IO model (default 4096)")
            p.add_argument("--batch", type=int,
                           help=f"batch of the modelled call (default {EXPLAIN_TOKENS} // Nq)")
            p.add_argument("--heads", type=int,
                           help=f"heads of the modelled call (default {EXPLAIN_WIDTH} // head_dim)")
            p.add_argument("--measure", action="store_true",
                           help="on a GPU: measure the ceilings and time the op beside the model")
            p.add_argument("--bandwidth", type=float, help="copy bandwidth ceiling, TB/s")
            p.add_argument("--tflops", type=float, help="matmul ceiling, TFLOP/s")
        p.set_defaults(run=run)
    p = sub.add_parser("cache", help="the kernel cache ($FLASHGEN_CACHE_DIR): list or clear")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="cached modules: name, content key, size, date")
    clear = actions.add_parser("clear", help="remove cached modules (all, or matching a glob)")
    clear.add_argument("pattern", nargs="?", default="*",
                       help="a glob over module names, e.g. 'alibi_*' (default: all)")
    p.set_defaults(run=cmd_cache)
    _add_bench_parsers(sub)
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
