"""The function table: every function a spec may call, in one place.

An entry says how the function types, how the reference computes it (torch),
how a scalar interpreter computes it (Python, for constant folding and the naive
test oracle), how CUDA spells it (a helper in templates/common/expr.cuh), and its
partial derivatives. Adding a function to the language means adding one entry here
and, if CUDA lacks it, one helper in expr.cuh."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import build as B
from .nodes import Expr
from .types import Type

INT32_MIN, INT32_MAX = -2**31, 2**31 - 1


def _float_to_int_floor(x: torch.Tensor, rounding: Callable) -> torch.Tensor:
    # As PTX cvt.rmi/rpi.s32.f32: saturate to the int32 range, NaN -> 0.
    y = rounding(x.double()).nan_to_num(0.0, posinf=INT32_MAX, neginf=INT32_MIN)
    return y.clamp(INT32_MIN, INT32_MAX).to(torch.int32)


def _scalar_to_int(x: float, rounding: Callable) -> int:
    if math.isnan(x):
        return 0
    if math.isinf(x):
        return INT32_MAX if x > 0 else INT32_MIN
    return max(INT32_MIN, min(INT32_MAX, rounding(x)))


def _torch_min(a, b):
    return torch.minimum(*torch.broadcast_tensors(*_promote(a, b)))


def _torch_max(a, b):
    return torch.maximum(*torch.broadcast_tensors(*_promote(a, b)))


def _promote(*xs):
    # promote_types, not result_type: torch.compile traces it (FlexAttention runs the
    # evaluator inside compiled mods, flashgen/bench/flex.py), and the two agree here, as
    # operands share a category (the checker makes int -> float explicit)
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in xs))
    return [x.to(dtype) for x in xs]


def _nan_min(a, b):
    return a if (isinstance(a, float) and math.isnan(a)) else b if (isinstance(b, float) and math.isnan(b)) else min(a, b)


def _nan_max(a, b):
    return a if (isinstance(a, float) and math.isnan(a)) else b if (isinstance(b, float) and math.isnan(b)) else max(a, b)


def _exp(x):
    return math.exp(x) if x < 709.7 else math.inf


def _log(x):
    return math.nan if x < 0 or math.isnan(x) else -math.inf if x == 0 else math.log(x)


def _sqrt(x):
    return math.nan if x < 0 or math.isnan(x) else math.sqrt(x)


def _pow(x, y):
    try:
        return math.pow(x, y)
    except ValueError:          # negative base, fractional exponent
        return math.nan
    except ZeroDivisionError:   # 0 ** negative
        return math.inf
    except OverflowError:
        return math.inf


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x > -709 else 0.0


@dataclass(frozen=True)
class Function:
    name: str
    arity: int
    kind: str                 # "float": float -> float; "numeric": int or float, kept;
                              # "to_int": float -> int
    torch: Callable           # tensors -> tensor (the reference)
    scalar: Callable          # Python numbers -> number (folding, the naive oracle)
    cuda: str                 # helper in templates/common/expr.cuh, overloaded for int/float
    derivative: Callable | None  # args -> tuple of d f / d arg_i (IR), None: not differentiable
    doc: str

    def result_type(self, arg_types: tuple[Type, ...]) -> Type:
        if self.kind == "to_int":
            return Type.INT
        if self.kind == "numeric" and all(t is Type.INT for t in arg_types):
            return Type.INT
        return Type.FLOAT

    def check_args(self, arg_types: tuple[Type, ...]) -> str | None:
        """A message if the argument types do not fit, else None."""
        if any(t is Type.BOOL for t in arg_types):
            return f"{self.name}() takes numbers, not bool"
        return None


def _tie_half(cond_lt: Expr, cond_eq: Expr) -> Expr:
    return B.select(cond_lt, B.ONE, B.select(cond_eq, B.const(0.5), B.ZERO))


def _clamp_derivative(x, lo, hi):
    # clamp is min(max(x, lo), hi): the chain rule through both, ties split as in min/max.
    inner = B.call("max", x, lo)
    d_min = (_tie_half(B.compare("lt", inner, hi), B.compare("eq", inner, hi)),
             _tie_half(B.compare("lt", hi, inner), B.compare("eq", inner, hi)))
    d_max = (_tie_half(B.compare("gt", x, lo), B.compare("eq", x, lo)),
             _tie_half(B.compare("gt", lo, x), B.compare("eq", x, lo)))
    return (B.mul(d_min[0], d_max[0]), B.mul(d_min[0], d_max[1]), d_min[1])


_TABLE = [
    Function("exp", 1, "float", torch.exp, _exp, "fg::exp",
             lambda x: (B.call("exp", x),), "e^x"),
    Function("log", 1, "float", torch.log, _log, "fg::log",
             lambda x: (B.div(B.ONE, x),), "natural logarithm; log(0) = -inf"),
    Function("sqrt", 1, "float", torch.sqrt, _sqrt, "fg::sqrt",
             lambda x: (B.div(B.const(0.5), B.call("sqrt", x)),), "square root"),
    Function("tanh", 1, "float", torch.tanh, math.tanh, "fg::tanh",
             lambda x: (B.sub(B.ONE, B.mul(B.call("tanh", x), B.call("tanh", x))),),
             "hyperbolic tangent"),
    Function("sigmoid", 1, "float", torch.sigmoid, _sigmoid, "fg::sigmoid",
             lambda x: (B.mul(B.call("sigmoid", x), B.sub(B.ONE, B.call("sigmoid", x))),),
             "1 / (1 + e^-x)"),
    Function("pow", 2, "float", torch.pow, _pow, "fg::pow",
             lambda x, y: (B.mul(y, B.call("pow", x, B.sub(y, B.ONE))),
                           B.mul(B.call("pow", x, y), B.call("log", x))),
             "x raised to y"),
    Function("abs", 1, "numeric", torch.abs, abs, "fg::abs",
             lambda x: (B.select(B.compare("gt", x, B.ZERO), B.ONE,
                                 B.select(B.compare("lt", x, B.ZERO), B.const(-1.0), B.ZERO)),),
             "absolute value"),
    Function("min", 2, "numeric", _torch_min, _nan_min, "fg::min",
             lambda a, b: (_tie_half(B.compare("lt", a, b), B.compare("eq", a, b)),
                           _tie_half(B.compare("lt", b, a), B.compare("eq", a, b))),
             "the smaller of two numbers (NaN if either is NaN)"),
    Function("max", 2, "numeric", _torch_max, _nan_max, "fg::max",
             lambda a, b: (_tie_half(B.compare("gt", a, b), B.compare("eq", a, b)),
                           _tie_half(B.compare("gt", b, a), B.compare("eq", a, b))),
             "the larger of two numbers (NaN if either is NaN)"),
    Function("clamp", 3, "numeric",
             lambda x, lo, hi: _torch_min(_torch_max(x, lo), hi),
             lambda x, lo, hi: _nan_min(_nan_max(x, lo), hi), "fg::clamp",
             lambda x, lo, hi: _clamp_derivative(x, lo, hi), "min(max(x, lo), hi)"),
    Function("floor", 1, "to_int", lambda x: _float_to_int_floor(x, torch.floor),
             lambda x: _scalar_to_int(x, math.floor), "fg::floor_to_int",
             None, "largest integer <= x, as an int (saturating; NaN -> 0)"),
    Function("ceil", 1, "to_int", lambda x: _float_to_int_floor(x, torch.ceil),
             lambda x: _scalar_to_int(x, math.ceil), "fg::ceil_to_int",
             None, "smallest integer >= x, as an int (saturating; NaN -> 0)"),
]

FUNCTIONS: dict[str, Function] = {f.name: f for f in _TABLE}
