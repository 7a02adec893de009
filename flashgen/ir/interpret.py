"""A scalar interpreter for IR expressions: one element at a time, in Python numbers.

It folds constants in the checker and is the independent oracle of the tests (it
shares nothing with the vectorised reference but the function table's scalar forms)."""
from __future__ import annotations

import math
from typing import Mapping

import torch

from .functions import FUNCTIONS
from .nodes import Binary, Call, Const, Expr, Load, Local, ScalarParam, Select, ToFloat, Unary, Var
from .types import Type


def wrap_int32(x: int) -> int:
    return (int(x) + 2**31) % 2**32 - 2**31


def floor_div(a, b):
    """Integer `//` rounds toward -inf (as Python); x // 0 is 0. Floats follow torch."""
    if isinstance(a, int) and isinstance(b, int):
        return 0 if b == 0 else wrap_int32(a // b)
    return float(torch.div(_f64(a), _f64(b), rounding_mode="floor"))


def floor_mod(a, b):
    """Integer `%` takes the sign of the divisor (as Python); x % 0 is 0. Floats follow torch."""
    if isinstance(a, int) and isinstance(b, int):
        return 0 if b == 0 else wrap_int32(a % b)
    return float(torch.remainder(_f64(a), _f64(b)))


def _f64(x):
    return torch.tensor(float(x), dtype=torch.float64)


class NotConstant(Exception):
    pass


def evaluate(e: Expr, env: Mapping[str, object] | None = None, lets: Mapping[str, Expr] | None = None):
    """The value of `e`. `env` maps variable/scalar names to numbers and tensor names
    to callables taking the (already clamped) index tuple; `lets` maps let names to
    their expressions. Raises NotConstant when a name is not in env."""
    env = env or {}
    lets = lets or {}

    def ev(e):
        if isinstance(e, Const):
            return e.value
        if isinstance(e, (Var, ScalarParam)):
            if e.name not in env:
                raise NotConstant(e.name)
            return env[e.name]
        if isinstance(e, Local):
            if e.name not in lets:
                raise NotConstant(e.name)
            return ev(lets[e.name])
        if isinstance(e, Load):
            if e.name not in env:
                raise NotConstant(e.name)
            return env[e.name](tuple(ev(i) for i in e.indices))
        if isinstance(e, ToFloat):
            return float(ev(e.operand))
        if isinstance(e, Unary):
            x = ev(e.operand)
            return (not x) if e.op == "not" else (wrap_int32(-x) if e.type is Type.INT else -x)
        if isinstance(e, Select):
            return ev(e.then) if ev(e.condition) else ev(e.otherwise)
        if isinstance(e, Call):
            result = FUNCTIONS[e.function].scalar(*[ev(a) for a in e.args])
            return wrap_int32(result) if e.type is Type.INT else float(result)
        if isinstance(e, Binary):
            if e.op == "and":
                return bool(ev(e.left)) and bool(ev(e.right))
            if e.op == "or":
                return bool(ev(e.left)) or bool(ev(e.right))
            a, b = ev(e.left), ev(e.right)
            return _binary(e.op, a, b, e.type)
        raise TypeError(f"cannot evaluate {type(e).__name__}")

    return ev(e)


def _binary(op, a, b, type_):
    if op in ("eq", "ne", "lt", "le", "gt", "ge"):
        return {"eq": a == b, "ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]
    if op == "floordiv":
        return floor_div(a, b)
    if op == "mod":
        return floor_mod(a, b)
    if type_ is Type.INT:
        return wrap_int32({"add": a + b, "sub": a - b, "mul": a * b}[op])
    a, b = float(a), float(b)
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b if not (math.isinf(a) and b == 0 or math.isinf(b) and a == 0) else math.nan
    if op == "div":
        if b == 0:
            return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)
        return a / b
    raise ValueError(op)
