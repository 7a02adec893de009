"""Which keys can a query see at all? Bounds on kv_idx (and on q_idx) read off the mask.

A sliding window's `q_idx >= kv_idx && q_idx - kv_idx < window` shows query q only the keys
[q - window + 1, q]. The tile classification (render/tile_class.py) finds that out one
tile, or one span of tiles, at a time: a Q tile of the window at N = 8192 asks about the
55 tiles it skips before reaching its 9 visible ones, in the producer and in every
consumer thread of a kernel (kernels/walk.cuh TileWalk). Solved for kv_idx, the mask's
comparisons give the row's visible keys in one evaluation, and the kernels walk only the
tiles between them.

The rule. A comparison `left op right` of ints whose sides are affine in the index
(int_step, affine.py: sums, differences and constant multiples of it) with
left - right = s * index + rest, s = +1 or -1, holds exactly when `index op' bound`, with
the bound `rest` solved for: `q_idx - kv_idx < window` is `kv_idx >= q_idx - window + 1`.
`&&` intersects its sides' ranges, `||` takes their hull, `!` is pushed to the
comparisons (De Morgan; `!(a < b)` is `a >= b`), an `if` takes the hull of its branches,
a comparison with min, max, abs or clamp unfolds into comparisons without them
(`abs(q_idx - kv_idx) <= w` is `q_idx - kv_idx <= w && -(q_idx - kv_idx) <= w`), and
anything else (a table read, a float comparison, `%`, `==` of bools) bounds nothing.
So every visible (q, kv) has kv inside the range: the range may hold invisible keys (the
tiles there are classified as before), never miss a visible one.

Ints wrap at 32 bits (the language's rule, as in CUDA), and solving assumes they do not:
`left - right` is not what `left op right` compares when a side wrapped. The kernels'
function therefore evaluates each side over the whole range (this Q tile's queries, every
key) by interval arithmetic (interval.cuh), which returns "any int" where a sum could
leave int32, and a comparison whose side may have wrapped bounds nothing there."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import build as B
from ..ir.nodes import (AttentionSpec, Binary, Call, Const, Expr, Select, Unary, Var,
                        inline_lets, transform)
from ..ir.pretty import pretty
from ..ir.types import Type
from .affine import int_step

INDICES = ("q_idx", "kv_idx")
_FLIP = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}
_NEGATE = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}


@dataclass(frozen=True)
class Bound:
    """`lower <= index <= upper` (either may be None: unbounded), which the comparison
    `left op right` of the mask implies wherever neither side wraps."""
    comparison: Expr   # as the mask holds it (negated where a `!` was pushed to it)
    left: Expr
    right: Expr
    lower: Expr | None
    upper: Expr | None


@dataclass(frozen=True)
class AllOf:
    """Every part holds (`&&`): the intersection of their ranges."""
    parts: tuple["Range", ...]


@dataclass(frozen=True)
class AnyOf:
    """Some part holds (`||`, the branches of an `if`): the hull of their ranges."""
    parts: tuple["Range", ...]


@dataclass(frozen=True)
class Everything:
    """No bound: the index may be anything."""


@dataclass(frozen=True)
class Nothing:
    """No index: the mask is the constant false. (A contradiction such as `a < b && a > b`
    is not looked for: its range comes out empty wherever its bounds cross.)"""


Range = Bound | AllOf | AnyOf | Everything | Nothing
EVERYTHING, NOTHING = Everything(), Nothing()


def index_range(spec: AttentionSpec, index: str) -> Range | None:
    """The range of `index` (q_idx or kv_idx) the mask allows, in terms of the other index
    and the parameters; None where it bounds nothing (no mask, or no comparison solves)."""
    assert index in INDICES
    if spec.mask is None:
        return None
    r = _range(inline_lets(spec, spec.mask), index, False)
    return None if isinstance(r, Everything) else r


def bounds(r: Range) -> list[Bound]:
    """The comparisons of a range, in the mask's order."""
    if isinstance(r, Bound):
        return [r]
    if isinstance(r, (AllOf, AnyOf)):
        return [b for part in r.parts for b in bounds(part)]
    return []


def describe(r: Range, index: str) -> str:
    """The range as text: `kv_idx >= q_idx - window + 1 && kv_idx <= q_idx`."""
    if isinstance(r, Bound):
        return " && ".join(f"{index} {op} {pretty(x)}" for op, x in
                           ((">=", r.lower), ("<=", r.upper)) if x is not None)
    if isinstance(r, Nothing):
        return "none"
    if isinstance(r, Everything):
        return "any"
    joined = [describe(part, index) for part in r.parts]
    if isinstance(r, AllOf):
        return " && ".join(f"({t})" if isinstance(p, AnyOf) else t for p, t in zip(r.parts, joined))
    return " || ".join(f"({t})" if isinstance(p, AllOf) else t for p, t in zip(r.parts, joined))


def _range(e: Expr, index: str, negated: bool) -> Range:
    if isinstance(e, Const) and e.type is Type.BOOL:
        return NOTHING if bool(e.value) == negated else EVERYTHING
    if isinstance(e, Unary) and e.op == "not":
        return _range(e.operand, index, not negated)
    if isinstance(e, Select):
        return _any_of(_range(e.then, index, negated), _range(e.otherwise, index, negated))
    if isinstance(e, Binary) and e.op in ("and", "or"):
        left, right = _range(e.left, index, negated), _range(e.right, index, negated)
        # !(a && b) is !a || !b
        return _all_of(left, right) if (e.op == "and") != negated else _any_of(left, right)
    if isinstance(e, Binary) and e.op in _NEGATE and e.left.type is Type.INT:
        op = _NEGATE[e.op] if negated else e.op
        comparison = Binary(op, e.left, e.right, type=Type.BOOL, span=e.span)
        unfolded = _unfold(comparison)
        if unfolded is not None:
            return _range(unfolded, index, False)
        return _solve(comparison, index)
    return EVERYTHING


def _unfold(comparison: Binary) -> Expr | None:
    """A comparison with min, max, abs or clamp on a side as comparisons without it, else
    None: `a < min(b, c)` is `a < b && a < c`, `a <= abs(x)` is `a <= x || a <= -x`. Exact
    in int32 but for abs(INT32_MIN), which the kernels' guard drops (the side -x wraps)."""
    op = comparison.op
    if op in ("eq", "ne"):
        return None
    for call, a, o in ((comparison.right, comparison.left, op),
                       (comparison.left, comparison.right, _FLIP[op])):   # `a o call(...)`
        if not (isinstance(call, Call) and call.type is Type.INT):
            continue
        below = o in ("lt", "le")          # a below the call's value
        if call.function in ("min", "max"):
            b, c = call.args
            join = "and" if (call.function == "min") == below else "or"
            return B.compare(join, B.compare(o, a, b), B.compare(o, a, c))
        if call.function == "abs":
            x, = call.args
            return B.compare("or" if below else "and", B.compare(o, a, x),
                             B.compare(o, a, Unary("neg", x, type=Type.INT)))
        if call.function == "clamp":       # min(max(x, lo), hi), as the language defines it
            x, lo, hi = call.args
            inner = Call("max", (x, lo), type=Type.INT)
            return B.compare(o, a, Call("min", (inner, hi), type=Type.INT))
    return None


def _solve(comparison: Binary, index: str) -> Range:
    """`left op right` as a bound on index, where it solves (see the module's docstring)."""
    left, right, op = comparison.left, comparison.right, comparison.op
    sl, sr = int_step(left, index), int_step(right, index)
    if sl is None or sr is None or sl - sr not in (1, -1) or op == "ne":
        return EVERYTHING
    left0, right0 = _at_zero(left, index), _at_zero(right, index)
    # left - right = step * index + (left0 - right0), so `left op right` is
    if sl - sr == 1:        # index op right0 - left0
        bound = _sub(right0, left0)
    else:                   # left0 - right0 op index, that is index op' left0 - right0
        bound, op = _sub(left0, right0), _FLIP[op]
    lower = upper = None
    if op in ("ge", "eq"):
        lower = bound
    if op == "gt":
        lower = _add(bound, 1)
    if op in ("le", "eq"):
        upper = bound
    if op == "lt":
        upper = _add(bound, -1)
    return Bound(comparison, left, right, lower, upper)


def _all_of(a: Range, b: Range) -> Range:
    if isinstance(a, Nothing) or isinstance(b, Nothing):
        return NOTHING
    parts = [p for r in (a, b) for p in (r.parts if isinstance(r, AllOf) else (r,))
             if not isinstance(p, Everything)]
    return EVERYTHING if not parts else parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def _any_of(a: Range, b: Range) -> Range:
    if isinstance(a, Everything) or isinstance(b, Everything):
        return EVERYTHING
    parts = [p for r in (a, b) for p in (r.parts if isinstance(r, AnyOf) else (r,))
             if not isinstance(p, Nothing)]
    return NOTHING if not parts else parts[0] if len(parts) == 1 else AnyOf(tuple(parts))


# ---- int expressions, folded where that keeps the generated code and `explain` readable

_INT32 = range(-2**31, 2**31)


def _int(value: int) -> Const:
    return Const(value, type=Type.INT)


def _at_zero(e: Expr, index: str) -> Expr:
    """e with index = 0 (e is affine in it: this is its part that does not read it)."""
    zero = _int(0)
    return _fold(transform(e, lambda n: zero if isinstance(n, Var) and n.name == index else None))


def _fold(e: Expr) -> Expr:
    """Drop the zeros that substituting index = 0 left (x + 0, 0 - x, 2 * 0...) and the
    double negations."""
    def fold(n: Expr):
        if isinstance(n, Unary) and n.op == "neg" and _is_int(n.operand, 0):
            return n.operand
        if isinstance(n, Unary) and n.op == "neg" and isinstance(n.operand, Unary) \
                and n.operand.op == "neg":
            return n.operand.operand
        if not isinstance(n, Binary) or n.type is not Type.INT:
            return None
        if n.op == "mul" and (_is_int(n.left, 0) or _is_int(n.right, 0)):
            return _int(0)
        if n.op in ("add", "sub"):
            return _sub(n.left, n.right) if n.op == "sub" else _add_expr(n.left, n.right)
        return None
    return transform(e, fold)


def _is_int(e: Expr, value: int) -> bool:
    return isinstance(e, Const) and e.type is Type.INT and e.value == value


def _add_expr(a: Expr, b: Expr) -> Expr:
    if _is_int(b, 0):
        return a
    if _is_int(a, 0):
        return b
    if isinstance(b, Unary) and b.op == "neg":
        return _sub(a, b.operand)
    if isinstance(a, Const) and isinstance(b, Const) and a.value + b.value in _INT32:
        return _int(a.value + b.value)
    return Binary("add", a, b, type=Type.INT)


def _sub(a: Expr, b: Expr) -> Expr:
    if _is_int(b, 0):
        return a
    if _is_int(a, 0):
        if isinstance(b, Unary) and b.op == "neg":
            return b.operand
        return Unary("neg", b, type=Type.INT)
    if isinstance(b, Unary) and b.op == "neg":
        return _add_expr(a, b.operand)
    if isinstance(a, Const) and isinstance(b, Const) and a.value - b.value in _INT32:
        return _int(a.value - b.value)
    return Binary("sub", a, b, type=Type.INT)


def _add(a: Expr, k: int) -> Expr:
    """a + k, merged into a's last constant term where there is one (`q - w - 1 + 1` is
    `q - w`)."""
    if isinstance(a, Const) and a.value + k in _INT32:
        return _int(a.value + k)
    if isinstance(a, Binary) and a.op in ("add", "sub") and isinstance(a.right, Const):
        net = (a.right.value if a.op == "add" else -a.right.value) + k
        if net in _INT32 and -net in _INT32:
            a, k = a.left, net
    return _add_expr(a, _int(k)) if k >= 0 else _sub(a, _int(-k))
