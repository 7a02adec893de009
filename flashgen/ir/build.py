"""Small constructors for IR expressions that fold constants on the way.

Used by the derivative and by the function table's derivative rules, so that a
derivative like d(score + bias)/d score comes out as `1.0`, not `1.0 + 0.0`."""
from __future__ import annotations

from .nodes import Binary, Call, Const, Expr, Select, ToFloat, Unary
from .types import Type


def const(value: float) -> Const:
    return Const(float(value), type=Type.FLOAT)


ZERO = const(0.0)
ONE = const(1.0)


def is_const(e: Expr, value) -> bool:
    return isinstance(e, Const) and e.value == value


def as_float(e: Expr) -> Expr:
    if e.type is Type.FLOAT:
        return e
    if isinstance(e, Const):
        return const(e.value)
    return ToFloat(e, type=Type.FLOAT, span=e.span)


def add(a: Expr, b: Expr) -> Expr:
    a, b = as_float(a), as_float(b)
    if is_const(a, 0.0):
        return b
    if is_const(b, 0.0):
        return a
    if isinstance(a, Const) and isinstance(b, Const):
        return const(a.value + b.value)
    return Binary("add", a, b, type=Type.FLOAT)


def neg(a: Expr) -> Expr:
    a = as_float(a)
    if isinstance(a, Const):
        return const(-a.value)
    if isinstance(a, Unary) and a.op == "neg":
        return a.operand
    return Unary("neg", a, type=Type.FLOAT)


def sub(a: Expr, b: Expr) -> Expr:
    if is_const(as_float(b), 0.0):
        return as_float(a)
    if is_const(as_float(a), 0.0):
        return neg(b)
    a, b = as_float(a), as_float(b)
    if isinstance(a, Const) and isinstance(b, Const):
        return const(a.value - b.value)
    return Binary("sub", a, b, type=Type.FLOAT)


def mul(a: Expr, b: Expr) -> Expr:
    a, b = as_float(a), as_float(b)
    if is_const(a, 0.0) or is_const(b, 0.0):
        return ZERO
    if is_const(a, 1.0):
        return b
    if is_const(b, 1.0):
        return a
    if is_const(a, -1.0):
        return neg(b)
    if is_const(b, -1.0):
        return neg(a)
    if isinstance(a, Const) and isinstance(b, Const):
        return const(a.value * b.value)
    return Binary("mul", a, b, type=Type.FLOAT)


def div(a: Expr, b: Expr) -> Expr:
    a, b = as_float(a), as_float(b)
    if is_const(a, 0.0):
        return ZERO
    if is_const(b, 1.0):
        return a
    return Binary("div", a, b, type=Type.FLOAT)


def call(name: str, *args: Expr) -> Expr:
    from .functions import FUNCTIONS
    fn = FUNCTIONS[name]
    return Call(name, tuple(args), type=fn.result_type(tuple(a.type for a in args)))


def select(condition: Expr, a: Expr, b: Expr) -> Expr:
    a, b = as_float(a), as_float(b)
    if a == b:
        return a
    if isinstance(condition, Const):
        return a if condition.value else b
    return Select(condition, a, b, type=Type.FLOAT)


def compare(op: str, a: Expr, b: Expr) -> Expr:
    return Binary(op, a, b, type=Type.BOOL)
