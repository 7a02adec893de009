"""Is `score` the raw score plus a bias that is affine in kv_idx?

ALiBi's `score = score + slopes[h] * (kv_idx - q_idx)` is: along a row, its bias grows by
`slopes[h]` per key. A forward kernel then need not evaluate the bias per element (an
integer subtraction, a conversion, a multiply and an add per score, PERF.md). It takes the
bias once per row and tile at the thread's first column (`bias`) and its growth per key
(`bias_step`); each score then costs one FFMA, the growth times its column offset, a
compile-time constant. The row's part goes to the softmax as an offset in the exponent's
FFMA (kernels/softmax.cuh), so it costs nothing per element.

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


def affine_bias(spec: AttentionSpec) -> AffineBias | None:
    """`score` as `score + E` (terms added to or subtracted from score, in any order) with
    E affine in kv_idx, else None."""
    if spec.score is None:
        return None
    bias = _added_to_score(spec.score)
    if bias is None or isinstance(bias, Const):   # no bias, or a constant one (cancels)
        return None
    step = _float_step(inline_lets(spec, bias))
    return None if step is None else AffineBias(bias, step)


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


def _float_step(e: Expr) -> Expr | None:
    """d e / d kv_idx for a float e affine in kv_idx (the result reads no kv_idx), else None."""
    if not _reads(e, "kv_idx"):
        return B.ZERO
    if isinstance(e, ToFloat):
        k = _int_step(e.operand)
        return None if k is None else B.const(k)
    if isinstance(e, Unary) and e.op == "neg":
        d = _float_step(e.operand)
        return None if d is None else B.neg(d)
    if isinstance(e, Select) and not _reads(e.condition, "kv_idx"):
        a, b = _float_step(e.then), _float_step(e.otherwise)
        return None if a is None or b is None else B.select(e.condition, a, b)
    if isinstance(e, Binary):
        left, right = e.left, e.right
        if e.op in ("add", "sub"):
            a, b = _float_step(left), _float_step(right)
            if a is None or b is None:
                return None
            return B.add(a, b) if e.op == "add" else B.sub(a, b)
        if e.op == "mul" and not _reads(left, "kv_idx"):
            d = _float_step(right)
            return None if d is None else B.mul(left, d)
        if e.op in ("mul", "div") and not _reads(right, "kv_idx"):
            d = _float_step(left)
            if d is None:
                return None
            return B.mul(d, right) if e.op == "mul" else B.div(d, right)
    return None   # a table read, a call, a select on kv_idx...: not affine (or not known to be)


def _int_step(e: Expr) -> int | None:
    """The constant d e / d kv_idx of an integer e (kv_idx, sums, constant multiples), else
    None: a step that varies (kv_idx * n) would need the per-element form anyway."""
    if e.type is not Type.INT:
        return None
    if not _reads(e, "kv_idx"):
        return 0
    if isinstance(e, Var):
        return 1   # kv_idx itself
    if isinstance(e, Unary) and e.op == "neg":
        k = _int_step(e.operand)
        return None if k is None else -k
    if isinstance(e, Binary):
        if e.op in ("add", "sub"):
            a, b = _int_step(e.left), _int_step(e.right)
            if a is None or b is None:
                return None
            return a + b if e.op == "add" else a - b
        if e.op == "mul":
            for c, x in ((e.left, e.right), (e.right, e.left)):
                if isinstance(c, Const):
                    k = _int_step(x)
                    return None if k is None else int(c.value) * k
    return None
