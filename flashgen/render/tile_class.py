"""The mask, lifted to whole tiles: interval analysis rendered as CUDA.

For a (Q tile, KV tile) pair the kernels need to know, before loading anything,
whether the mask is false everywhere (skip the tile), true everywhere (run it with no
per-element mask), or mixed. `tile_class` renders the mask expression a second time,
over intervals: `q_idx` becomes [q_lo, q_hi], `kv_idx` [kv_lo, kv_hi], every int
subexpression the interval of the values it takes (fg::Iv) and every bool one the
pair "may be true / may be false" (fg::Tri); the rules live in
templates/common/interval.cuh. The analysis is static -- derived from the spec, no
runtime block mask -- and cheap at run time: a few integer operations per tile.

A tensor read at indices that are constant over the tile (lengths[b]) is read once
and is exact, so key padding skips whole tiles. A read whose last index varies over
the tile (doc[b, q_idx]) scans the range for its [min, max] (interval.cuh range_of), so
a document mask skips other documents' tiles and runs those inside one document as
full. Other varying reads and float arithmetic are not tracked, and leave the tile
mixed."""
from __future__ import annotations

from dataclasses import dataclass

from ..analysis.bounds import AllOf, Bound, Nothing, Range, bounds, describe, index_range
from ..ir.nodes import (AttentionSpec, Binary, Call, Const, Expr, Load, Local, ScalarParam,
                        Select, ToFloat, Unary, Var, inline_lets, uses)
from ..ir.types import Type
from ..ir.pretty import pretty
from .cuda_expr import Renderer, c_literal, render_many

_RANGE_VARS = {"q_idx": "fg::Iv{q_lo, q_hi}", "kv_idx": "fg::Iv{kv_lo, kv_hi}"}
_INT_CALLS = {"min": "fg::iv_min", "max": "fg::iv_max", "clamp": "fg::iv_clamp",
              "abs": "fg::iv_abs"}
_COMPARE = ("eq", "ne", "lt", "le", "gt", "ge")


class IntervalRenderer(Renderer):
    temp_prefix = "r"

    def c_type(self, e: Expr) -> str:
        return {Type.INT: "fg::Iv", Type.BOOL: "fg::Tri"}[e.type]

    def local_name(self, name: str) -> str:
        return f"range_{name}"

    def render(self, e: Expr) -> str:
        if e.type is Type.FLOAT:        # floats are not tracked (see interval.cuh)
            raise AssertionError("float nodes are never rendered as intervals")
        return super().render(e)

    def _any(self, e: Expr) -> str:
        return "fg::iv_any()" if e.type is Type.INT else "fg::tri_any()"

    def _render(self, e: Expr) -> str:
        r = self.render
        if isinstance(e, Const):
            return (f"fg::iv({c_literal(e.value, e.type)})" if e.type is Type.INT
                    else f"fg::tri({c_literal(e.value, e.type)})")
        if isinstance(e, Var):
            return _RANGE_VARS.get(e.name, f"fg::iv({e.name})")
        if isinstance(e, ScalarParam):
            return f"fg::iv(p.{e.name})" if e.type is Type.INT else f"fg::tri(p.{e.name})"
        if isinstance(e, Local):
            return self.local_name(e.name)
        if isinstance(e, Load):
            # exact when every index is: the one element the whole tile reads
            if any(i.type is not Type.INT for i in e.indices):
                return self._any(e)
            fn = "fg::iv_load" if e.type is Type.INT else "fg::tri_load"
            return f"{fn}(p.{e.name}, {', '.join(r(i) for i in e.indices)})"
        if isinstance(e, Unary):
            return f"fg::tri_not({r(e.operand)})" if e.op == "not" else f"fg::iv_neg({r(e.operand)})"
        if isinstance(e, Select):
            cond = r(e.condition)
            fn = "fg::iv_select" if e.type is Type.INT else "fg::tri_select"
            return f"{fn}({cond}, {r(e.then)}, {r(e.otherwise)})"
        if isinstance(e, Call):
            if e.type is Type.INT and e.function in _INT_CALLS:
                return f"{_INT_CALLS[e.function]}({', '.join(r(a) for a in e.args)})"
            return self._any(e)          # floor/ceil of a float: untracked
        if isinstance(e, Binary):
            if e.op in ("and", "or"):   # the right side only when the left leaves it open
                fn = "fg::tri_and_then" if e.op == "and" else "fg::tri_or_else"
                return f"{fn}({r(e.left)}, [&] {{ return {r(e.right)}; }})"
            if e.op in _COMPARE:
                if e.left.type is Type.FLOAT:
                    return "fg::tri_any()"
                prefix = "iv" if e.left.type is Type.INT else "tri"
                return f"fg::{prefix}_{e.op}({r(e.left)}, {r(e.right)})"
            return f"fg::iv_{e.op}({r(e.left)}, {r(e.right)})"
        if isinstance(e, ToFloat):
            raise AssertionError("float nodes are never rendered as intervals")
        raise TypeError(e)


def mask_reads(spec: AttentionSpec, name: str) -> bool:
    """Does the mask depend on the built-in variable `name` ("b", "h"), through lets too?"""
    return spec.mask is not None and name in uses(inline_lets(spec, spec.mask))


def scans_tables(spec: AttentionSpec) -> bool:
    """Does the spec's tile_class() scan tables over tile ranges (a mask read such as
    doc[b, q_idx])? Then its tile classes depend on the call's data, and the kernels take
    them from tile lists built at run time (flashgen/runtime/mask_tiles.py) rather than
    scanning per tile. A block-sparse spec keeps scanning the tiles its layout lists."""
    if spec.mask is None or spec.block_sparse is not None:
        return False
    for node in inline_lets(spec, spec.mask).walk():
        if (isinstance(node, Load) and node.type is not Type.FLOAT
                and any({"q_idx", "kv_idx"} & uses(i) for i in node.indices)):
            return True
    return False


# ---- the mask's index ranges (flashgen/analysis/bounds.py), as interval arithmetic

_OTHER = {"kv_idx": "q", "q_idx": "kv"}    # a range of keys is asked for a range of queries


@dataclass(frozen=True)
class RangeFunctionView:
    """kv_range (the keys the mask may show to a range of queries) or q_range (the
    queries that may see a range of keys): variant.cuh.j2's range_function."""
    name: str            # kv_range or q_range
    given: str           # the parameters' prefix: q (q_lo, q_hi) or kv
    whole: str           # the solved index's prefix: kv (kv_lo, kv_hi: the whole row) or q
    origin: tuple[str, ...]
    statements: tuple[str, ...]
    leaves: tuple[tuple[str, str, str], ...]   # (name, comment, C text) per comparison
    result: str


def range_function(spec: AttentionSpec, index: str, origin: tuple[str, ...]
                   ) -> RangeFunctionView | None:
    """The C++ of the mask's range of `index`, or None where the mask bounds nothing."""
    r = index_range(spec, index)
    if r is None:
        return None
    leaves = bounds(r)
    roots = []
    for b in leaves:
        roots += [b.left, b.right] + [x for x in (b.lower, b.upper) if x is not None]
    statements, texts = render_many([], roots, IntervalRenderer)
    names, views, at = {}, [], 0
    for i, b in enumerate(leaves):
        left, right = texts[at], texts[at + 1]
        at += 2
        lower = upper = "fg::iv_any()"
        if b.lower is not None:
            lower, at = texts[at], at + 1
        if b.upper is not None:
            upper, at = texts[at], at + 1
        names[id(b)] = f"bound{i}"
        views.append((f"bound{i}", f"{pretty(b.comparison)}: {describe(b, index)}",
                      f"fg::solved({left}, {right}, {lower}, {upper})"))
    name = "kv_range" if index == "kv_idx" else "q_range"
    return RangeFunctionView(name, _OTHER[index], index.removesuffix("_idx"), origin,
                             tuple(statements), tuple(views), _combine(r, names))


def _combine(r: Range, names: dict[int, str]) -> str:
    if isinstance(r, Bound):
        return names[id(r)]
    if isinstance(r, Nothing):
        return "fg::no_index()"
    fn = "fg::range_and" if isinstance(r, AllOf) else "fg::range_or"
    text = _combine(r.parts[0], names)
    for part in r.parts[1:]:
        text = f"{fn}({text}, {_combine(part, names)})"
    return text
