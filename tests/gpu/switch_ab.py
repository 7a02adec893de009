"""A/B of a runtime switch (any setting a call reads when it runs: what a forward keeps for
the backward, a launch.py flag, a hand-written header's text, ...), forward or
forward+backward in one process on one GPU, on the benchmark suite's own inputs
(B * N = 16k tokens, H = 2048 / d), the settings interleaved over rounds; FlexAttention and
cuDNN in the same process where asked.

    PYTHONPATH=$PWD python tests/gpu/switch_ab.py saved [--specs a,b] [--sizes 2048,8192] [--d 128]
    PYTHONPATH=$PWD python tests/gpu/switch_ab.py header --header expr.cuh --other OLD.cuh \
        --directions fwd,fwd+bwd
    PYTHONPATH=$PWD python tests/gpu/switch_ab.py header --other OLD_TREE/templates
    PYTHONPATH=$PWD python tests/gpu/switch_ab.py plan --fields kv_stages=3,q_slots=1,o_stage=0
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
from pathlib import Path
from typing import Callable

import torch

import flashgen.api as api
from flashgen.bench import suite
from flashgen.bench.flops import attention_flops, tflops
from flashgen.bench.peers import runner
from flashgen.bench.timing import time_ms
from flashgen.plan import tiles
from flashgen.progress import Progress
from flashgen.render import kernels
from flashgen.runtime import launch

SPECS = "causal,sliding_window,document,block_layout,key_padding,prefix_lm,dense"
FLEX = "sliding_window,document,block_layout"
CUDNN = "causal,dense"


def round_order(settings: dict, r: int, alternate: bool = True) -> list:
    """The (label, put) pairs of round r: odd rounds run B first. In a fixed A-then-B order
    the position run second read ~0.75 % faster, whichever tree held it (an A/A on an H100:
    PERF.md, "the A/B's position bias"), as large as the changes being measured."""
    order = list(settings.items())
    return order[::-1] if alternate and r % 2 else order


def compare(settings: dict[str, Callable[[], None]], restore: Callable[[], None], specs: str,
            sizes: list[int], d: int, flex: str = "", cudnn: str = "", rounds: int = 4,
            direction: str = "fwd+bwd", alternate: bool = True) -> None:
    """settings: label -> a function that puts the switch in that position (the first is A,
    the second B; the gain column is B's time over A's); restore: puts it back. Every
    position's modules are built (or found in the cache) before the first timing."""
    cases = suite.grid_cases(specs.split(","), sizes, ["bf16"], [d], [])
    try:
        for put in settings.values():
            put()
            suite.build_kernels(cases, Progress())
    finally:
        restore()
    a_label, b_label = list(settings)[:2]
    rows = []
    for case in cases:
        subject = suite._subject(case, api.compile(case.source), torch.device("cuda"))
        dout = torch.randn_like(subject.call.q)
        flops = attention_flops(case.B, case.H, case.q_len, case.N, case.d, case.d,
                                subject.visibility.fraction, direction)
        fn = suite._direction_fn(runner("flashgen", subject).forward, direction, subject, dout)
        times = {label: [] for label in settings}
        try:
            for r in range(rounds):
                for label, put in round_order(settings, r, alternate):
                    put()
                    times[label].append(time_ms(fn, warmup=3, reps=30, max_seconds=1.0).median_ms)
        finally:
            restore()
        row = {label: statistics.median(t) for label, t in times.items()}
        for peer, names in (("flex", flex), ("cudnn", cudnn)):
            if case.spec not in names.split(","):
                continue
            try:
                pf = suite._direction_fn(runner(peer, subject).forward, direction, subject, dout)
                row[peer] = time_ms(pf, warmup=3, reps=30, max_seconds=1.0).median_ms
            except Exception as error:  # noqa: BLE001 (a peer that cannot run is a result)
                print(f"{case.label()}: {peer}: {str(error).splitlines()[0][:120]}")
        rows.append((case, flops, row))
        print(case.label(), {k: round(v, 3) for k, v in row.items()}, flush=True)
        del subject, fn
        suite._free_memory()
    print(f"\nd = {d}, {direction} ms, {a_label!r} against {b_label!r}")
    print(f"{'case':28s} {'A ms':>8s} {'B ms':>8s} {'B/A-1':>7s} {'TF A':>6s} {'TF B':>6s} "
          f"{'peer':>6s} {'peer ms':>8s} {'x A':>5s}")
    for case, flops, row in rows:
        a, b = row[a_label], row[b_label]
        peer = next((p for p in ("flex", "cudnn") if p in row), None)
        tail = f"{peer:>6s} {row[peer]:8.3f} {row[peer] / a:5.2f}" if peer else ""
        print(f"{case.spec + ' N=' + str(case.N):28s} {a:8.3f} {b:8.3f} {b / a - 1:+7.1%} "
              f"{tflops(flops, a):6.1f} {tflops(flops, b):6.1f} {tail}")


def _saved_settings():
    """delta from O in the input dtype (SAVE_NOTHING, dq / dk / dv without dropout) against O
    kept in fp32 (SAVE_F32_OUT; PERF.md, issue 8's twenty-fourth step)"""
    def put(saved):
        return lambda: setattr(api, "_saved_for_backward", lambda *a, **kw: saved)
    original = api._saved_for_backward
    return ({"bf16 O": put(launch.SAVE_NOTHING), "fp32 O": put(launch.SAVE_F32_OUT)},
            lambda: setattr(api, "_saved_for_backward", original))


def _module_per_position():
    """(state, dispatch, module): launch.module's builder with a cache of its own for the
    other position (state["other"]), so that each position's calls load that position's
    modules; `module` is the original, for restore()."""
    module = launch.module
    module_other = functools.cache(module.__wrapped__)   # the same builder, its own cache
    state = {"other": False}

    def dispatch(*args, **kwargs):
        return (module_other if state["other"] else module)(*args, **kwargs)
    return state, dispatch, module


def _header_settings(header: str, other: str):
    """hand-written headers as another tree has them against this tree's. `other`: a file,
    the text of one header (`header`: its name in a module, "expr.cuh", "kernels/mma.cuh"),
    or a templates/ folder, whose common/*.cuh and kernels/*.cuh all stand in (the
    rendered units and variant.cuh stay this tree's). Each position has its own modules
    (the headers are part of their hash) and its own cache of them, and the calls made in a
    position load that position's."""
    if not other:
        raise SystemExit("header: --other is a header's other text, or a templates/ folder")
    texts = (kernels.support_headers(Path(other)) if Path(other).is_dir()
             else {header: Path(other).read_text()})
    render = launch.render_module
    state, dispatch, module = _module_per_position()

    def render_module(*args, **kwargs):
        sources = render(*args, **kwargs)
        unknown = set(texts) - set(sources)
        if unknown:
            raise SystemExit(f"header: no {', '.join(sorted(unknown))} in a module (its headers: "
                             f"{', '.join(n for n in sources if n.endswith('.cuh'))})")
        return {**sources, **texts} if state["other"] else sources

    def put(other_text: bool):
        return lambda: state.update(other=other_text)

    def restore():
        launch.render_module, launch.module = render, module
    launch.render_module, launch.module = render_module, dispatch
    label = Path(other).name if not Path(other).is_dir() else f"{other} headers"
    return {label: put(True), "this tree's": put(False)}, restore


def _plan_settings(fields: str):
    """the warp-specialised forward's plan with some fields set (`fields`: "kv_stages=3,
    q_slots=1,o_stage=0"; ForwardPlan's names) against the planner's own. Where the
    planner's plan is not warp-specialised or the fields leave it as it is, both positions
    run the same kernel. Each position has its own plans and its own modules (the plan is
    rendered into the source, so the build cache tells them apart)."""
    if not fields:
        raise SystemExit("plan: --fields kv_stages=3,q_slots=1,o_stage=0 (ForwardPlan's names)")
    # each field's type as ForwardPlan declares it ("int" or "bool": the annotations are
    # strings), so that a new integer field is not read as a flag
    types = {f.name: f.type for f in dataclasses.fields(tiles.ForwardPlan)
             if f.type in ("int", "bool", int, bool)}
    names = set(types)
    changes = {}
    for item in fields.split(","):
        name, _, value = item.partition("=")
        if name not in names or not value.strip().isdigit():
            raise SystemExit(f"plan: --fields {fields!r}: {item!r} is not NAME=INTEGER with a "
                             f"ForwardPlan field ({', '.join(sorted(names))})")
        changes[name] = bool(int(value)) if types[name] in ("bool", bool) else int(value)
    planner = tiles._wgmma_ws_forward
    state, dispatch, module = _module_per_position()

    def ws_forward(*args, **kwargs):
        plan = planner(*args, **kwargs)
        return dataclasses.replace(plan, **changes) if state["other"] else plan

    def put(other: bool):
        def switch():
            state.update(other=other)
            for v in launch._VARIANTS.values():   # plans are cached per variant
                v._plans.clear()
        return switch

    def restore():
        tiles._wgmma_ws_forward, launch.module = planner, module
        put(False)()
    tiles._wgmma_ws_forward, launch.module = ws_forward, dispatch
    return {fields: put(True), "this tree's": put(False)}, restore


SWITCHES = {"saved": lambda args: _saved_settings(),
            "header": lambda args: _header_settings(args.header, args.other),
            "plan": lambda args: _plan_settings(args.fields)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("switch", choices=sorted(SWITCHES))
    ap.add_argument("--specs", default=SPECS)
    ap.add_argument("--sizes", default="2048,8192")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--flex", default=FLEX, help="specs whose FlexAttention f+b runs beside")
    ap.add_argument("--cudnn", default=CUDNN)
    ap.add_argument("--rounds", type=int, default=4, help="even: each position first as often")
    ap.add_argument("--fixed-order", action="store_true",
                    help="A before B in every round (the old order, to see its bias)")
    ap.add_argument("--directions", default="fwd+bwd", help="fwd, fwd+bwd or both (a table each)")
    ap.add_argument("--header", default="expr.cuh", help="header: the header's name in a module")
    ap.add_argument("--other", default="",
                    help="header: the file with its other text, or a templates/ folder (A)")
    ap.add_argument("--fields", default="",
                    help="plan: the warp-specialised forward's plan fields in A, "
                         "kv_stages=3,q_slots=1,o_stage=0")
    args = ap.parse_args(argv)
    settings, restore = SWITCHES[args.switch](args)
    for direction in args.directions.split(","):
        compare(settings, restore, args.specs, [int(n) for n in args.sizes.split(",")], args.d,
                args.flex, args.cudnn, args.rounds, direction, not args.fixed_order)


if __name__ == "__main__":
    main()
