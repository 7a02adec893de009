"""Symbolic differentiation of IR expressions.

The kernels need d score'/d score (to backpropagate through a softcap or a
temperature) and d score'/d param[...] (to give bias tables their gradients);
both come from `derivative(expr, wrt)`, which folds constants as it goes."""
from __future__ import annotations

from typing import Callable

from ..ir import build as B
from ..ir.functions import FUNCTIONS
from ..ir.nodes import (AttentionSpec, Binary, Call, Const, Expr, Load, Local, ScalarParam,
                        Select, ToFloat, Unary, Var, inline_lets)
from ..ir.types import Type


def differentiable_loads(spec: AttentionSpec) -> list[Load]:
    """The distinct reads of float tensor parameters in `score`, in order of appearance.
    Each gets its own gradient term (a table read twice at different places adds twice);
    the planner keeps narrower forward tiles for such specs (plan/tiles.py ws_block_n)."""
    if spec.score is None:
        return []
    score = inline_lets(spec, spec.score)
    loads = [n for n in score.walk() if isinstance(n, Load) and n.type is Type.FLOAT]
    return list(dict.fromkeys(loads))


class NotDifferentiable(Exception):
    """`node` depends on the variable but has no derivative (floor, %, //, ...)."""

    def __init__(self, node: Expr, what: str):
        super().__init__(what)
        self.node = node
        self.what = what


def is_score(e: Expr) -> bool:
    return isinstance(e, Var) and e.name == "score"


def depends_on(e: Expr, wrt: Callable[[Expr], bool]) -> bool:
    return any(wrt(n) for n in e.walk())


def derivative(e: Expr, wrt: Callable[[Expr], bool] = is_score) -> Expr:
    """d e / d x, where x is every node for which `wrt` holds (e.g. `score`).

    `let`s never depend on `score` (the checker forbids it), so a Local is a constant."""
    if wrt(e):
        return B.ONE
    if not depends_on(e, wrt):
        return B.ZERO
    if isinstance(e, (Const, Var, ScalarParam, Local)):
        return B.ZERO
    if isinstance(e, Load):
        # indices are ints: a Load depends on x only through an index (floor of x...)
        raise NotDifferentiable(e, f"indexing {e.name}[...] with a value computed from it")
    if isinstance(e, ToFloat):
        raise NotDifferentiable(e.operand, "an integer computed from it")
    if isinstance(e, Unary):
        return B.neg(derivative(e.operand, wrt))
    if isinstance(e, Select):
        return B.select(e.condition, derivative(e.then, wrt), derivative(e.otherwise, wrt))
    if isinstance(e, Call):
        fn = FUNCTIONS[e.function]
        if fn.derivative is None:
            raise NotDifferentiable(e, f"{fn.name}(), which has no derivative")
        partials = fn.derivative(*e.args)
        total = B.ZERO
        for arg, partial in zip(e.args, partials):
            if depends_on(arg, wrt):
                total = B.add(total, B.mul(partial, derivative(arg, wrt)))
        return total
    if isinstance(e, Binary):
        a, b = e.left, e.right
        if e.op in ("floordiv", "mod"):
            raise NotDifferentiable(e, "'//' or '%', which have no derivative")
        da, db = derivative(a, wrt), derivative(b, wrt)
        if e.op == "add":
            return B.add(da, db)
        if e.op == "sub":
            return B.sub(da, db)
        if e.op == "mul":
            return B.add(B.mul(da, b), B.mul(a, db))
        if e.op == "div":
            # (a/b)' = a'/b - a b' / b^2
            return B.sub(B.div(da, b), B.div(B.mul(a, db), B.mul(b, b)))
    raise NotDifferentiable(e, "an expression of this kind")
