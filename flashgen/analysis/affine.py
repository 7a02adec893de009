"""Is `score` the raw score plus a bias that is affine in kv_idx?

ALiBi's `score = score + slopes[h] * (kv_idx - q_idx)` is: along a row, its bias grows by
`slopes[h]` per key. A forward kernel then need not evaluate the bias per element (an
integer subtraction, a conversion, a multiply and an add per score, PERF.md). It takes the
bias once per row and tile at the thread's first column (`bias`) and its growth per key
(`bias_step`); each score then costs one FFMA, the growth times its column offset, a
compile-time constant. The row's part goes to the softmax as an offset in the exponent's
FFMA (kernels/softmax.cuh), so it costs nothing per element.

The backward holds S transposed (keys x query rows: kernels/backward_sm90.cuh), so there
it wants the bias affine in q_idx too: `q_step`, d E / d q_idx, where it is (ALiBi's is
`-slopes[h]`); it then takes the bias once per key row and tile and adds `c * q_step` to
a query column of offset c.

Exact in real arithmetic: bias(kv) = bias(kv0) + step * (kv - kv0) when the bias is affine.
In floats the bias at kv0 is rounded as the reference rounds it at kv, and the step's
product adds one rounding of a value at most 127 steps; integer indices convert exactly
(below 2^24)."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import build as B
from ..ir.nodes import (AttentionSpec, Binary, Const, Expr, Select, ToFloat, Unary, Var,
                        inline_lets)
from ..ir.types import Type


@dataclass(frozen=True)
class AffineBias:
    bias: Expr   # E in `score = score + E`, as the spec writes it (lets kept)
    step: Expr   # d E / d kv_idx, which reads no kv_idx (Const 0.0 when E reads none)
    q_step: Expr | None = None   # d E / d q_idx (reads no q_idx), where E is affine in it


def affine_bias(spec: AttentionSpec) -> AffineBias | None:
    """`score` as `score + E` (terms added to or subtracted from score, in any order) with
    E affine in kv_idx, else None; with its step along q_idx where E is affine in q_idx."""
    if spec.score is None:
        return None
    bias = _added_to_score(spec.score)
    if bias is None or isinstance(bias, Const):   # no bias, or a constant one (cancels)
        return None
    inlined = inline_lets(spec, bias)
    step = _float_step(inlined, "kv_idx")
    return None if step is None else AffineBias(bias, step, _float_step(inlined, "q_idx"))


def _added_to_score(e: Expr) -> Expr | None:
    """E with e = score + E, or None when e is not such a sum."""
    if _is_score(e):
        return B.ZERO
    if not isinstance(e, Binary) or e.op not in ("add", "sub"):
        return None
    if _reads(e.left, "score") and not _reads(e.right, "score"):
        inner = _added_to_score(e.left)
        if inner is None:
            return None
        return B.add(inner, e.right) if e.op == "add" else B.sub(inner, e.right)
    if e.op == "add" and _reads(e.right, "score") and not _reads(e.left, "score"):
        inner = _added_to_score(e.right)
        return None if inner is None else B.add(e.left, inner)
    return None


def _is_score(e: Expr) -> bool:
    return isinstance(e, Var) and e.name == "score"


def _reads(e: Expr, name: str) -> bool:
    return any(isinstance(n, Var) and n.name == name for n in e.walk())


def _float_step(e: Expr, index: str) -> Expr | None:
    """d e / d index (kv_idx or q_idx) for a float e affine in it (the result does not read
    it), else None."""
    if not _reads(e, index):
        return B.ZERO
    if isinstance(e, ToFloat):
        k = int_step(e.operand, index)
        return None if k is None else B.const(k)
    if isinstance(e, Unary) and e.op == "neg":
        d = _float_step(e.operand, index)
        return None if d is None else B.neg(d)
    if isinstance(e, Select) and not _reads(e.condition, index):
        a, b = _float_step(e.then, index), _float_step(e.otherwise, index)
        return None if a is None or b is None else B.select(e.condition, a, b)
    if isinstance(e, Binary):
        left, right = e.left, e.right
        if e.op in ("add", "sub"):
            a, b = _float_step(left, index), _float_step(right, index)
            if a is None or b is None:
                return None
            return B.add(a, b) if e.op == "add" else B.sub(a, b)
        if e.op == "mul" and not _reads(left, index):
            d = _float_step(right, index)
            return None if d is None else B.mul(left, d)
        if e.op in ("mul", "div") and not _reads(right, index):
            d = _float_step(left, index)
            if d is None:
                return None
            return B.mul(d, right) if e.op == "mul" else B.div(d, right)
    return None   # a table read, a call, a select on the index...: not affine (or not known to be)


def int_step(e: Expr, index: str) -> int | None:
    """The constant d e / d index of an integer e (the index, sums, constant multiples),
    else None: a step that varies (kv_idx * n) would need the per-element form anyway."""
    if e.type is not Type.INT:
        return None
    if not _reads(e, index):
        return 0
    if isinstance(e, Var):
        return 1   # the index itself
    if isinstance(e, Unary) and e.op == "neg":
        k = int_step(e.operand, index)
        return None if k is None else -k
    if isinstance(e, Binary):
        if e.op in ("add", "sub"):
            a, b = int_step(e.left, index), int_step(e.right, index)
            if a is None or b is None:
                return None
            return a + b if e.op == "add" else a - b
        if e.op == "mul":
            for c, x in ((e.left, e.right), (e.right, e.left)):
                if isinstance(c, Const):
                    k = int_step(x, index)
                    return None if k is None else int(c.value) * k
    return None
