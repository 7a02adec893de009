"""Vectorised evaluation of IR expressions over the whole (b, h, q_idx, kv_idx) grid.

Ints are int32 (wrapping, as in CUDA), floats are the reference's dtype, and every
tensor read clamps its indices to the tensor's bounds, as the language defines."""
from __future__ import annotations

import torch

from ..ir.functions import FUNCTIONS
from ..ir.nodes import (AttentionSpec, Binary, Call, Const, Expr, Load, Local, ScalarParam,
                        Select, ToFloat, Unary, Var)
from ..ir.types import Type

_COMPARE = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt,
            "ge": torch.ge}


class Evaluator:
    def __init__(self, spec: AttentionSpec, variables: dict[str, torch.Tensor],
                 params: dict[str, object], float_dtype: torch.dtype, device,
                 load_hook=None):
        self.spec = spec
        self.load_hook = load_hook        # applied to every float table read (reference.run)
        self.variables = variables        # b, h, q_idx, kv_idx, q_len, kv_len, score
        self.params = params
        self.dtype = float_dtype
        self.device = device
        self.lets: dict[str, torch.Tensor] = {}
        for let in spec.lets:             # in order: a let may use the ones before it
            self.lets[let.name] = self(let.expr)

    def _const(self, value, type_: Type) -> torch.Tensor:
        dtype = {Type.INT: torch.int32, Type.FLOAT: self.dtype, Type.BOOL: torch.bool}[type_]
        return torch.tensor(value, dtype=dtype, device=self.device)

    def __call__(self, e: Expr) -> torch.Tensor:
        if isinstance(e, Const):
            return self._const(e.value, e.type)
        if isinstance(e, Var):
            return self.variables[e.name]
        if isinstance(e, Local):
            return self.lets[e.name]
        if isinstance(e, ScalarParam):
            value = self.params[e.name]
            if isinstance(value, torch.Tensor):
                return value
            return self._const(value, e.type)
        if isinstance(e, Load):
            return self._load(e)
        if isinstance(e, ToFloat):
            return self(e.operand).to(self.dtype)
        if isinstance(e, Unary):
            x = self(e.operand)
            return torch.logical_not(x) if e.op == "not" else -x
        if isinstance(e, Select):
            return torch.where(self(e.condition), self(e.then), self(e.otherwise))
        if isinstance(e, Call):
            out = FUNCTIONS[e.function].torch(*[self(a) for a in e.args])
            return out.to(torch.int32) if e.type is Type.INT else out
        if isinstance(e, Binary):
            return self._binary(e)
        raise TypeError(f"cannot evaluate {type(e).__name__}")

    def _load(self, e: Load) -> torch.Tensor:
        t = self.params[e.name]
        index = []
        for axis, i in enumerate(e.indices):
            i = self(i).to(torch.int64).clamp(0, t.shape[axis] - 1)
            index.append(i)
        value = t[tuple(torch.broadcast_tensors(*index))]
        if e.type is Type.FLOAT:
            value = value.to(self.dtype)
            return self.load_hook(value) if self.load_hook and value.requires_grad else value
        return value.to(torch.int32) if e.type is Type.INT else value

    def _binary(self, e: Binary) -> torch.Tensor:
        a, b = self(e.left), self(e.right)
        if e.op == "and":
            return a & b
        if e.op == "or":
            return a | b
        if e.op in _COMPARE:
            return _COMPARE[e.op](a, b)
        if e.op in ("floordiv", "mod") and e.type is Type.INT:
            zero = b == 0
            safe = torch.where(zero, torch.ones_like(b), b)
            out = torch.div(a, safe, rounding_mode="floor") if e.op == "floordiv" \
                else torch.remainder(a, safe)
            return torch.where(zero, torch.zeros_like(out), out).to(torch.int32)
        if e.op == "floordiv":
            return torch.div(a, b, rounding_mode="floor")
        if e.op == "mod":
            return torch.remainder(a, b)
        out = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[e.op](a, b)
        return out.to(torch.int32) if e.type is Type.INT else out
