"""IR expressions -> CUDA C++ statements.

A rendered function body reads like the spec: `let`s become named locals, a
subexpression used more than once is computed once into `t0, t1, ...`, and every
operation the language defines beyond C (floor division, clamped tensor reads,
NaN-propagating min/max) is a helper from templates/common/expr.cuh. Names from
the spec reach CUDA only as validated identifiers under a prefix (`p.slopes`,
`let_rel`), never as raw text."""
from __future__ import annotations

from collections import Counter

from ..ir.functions import FUNCTIONS
from ..ir.nodes import (Binary, Call, Const, Expr, Load, Local, ScalarParam, Select, ToFloat,
                        Unary, Var)
from ..ir.types import Type

C_TYPE = {Type.INT: "int", Type.FLOAT: "float", Type.BOOL: "bool"}
_C_OP = {"add": "+", "sub": "-", "mul": "*", "div": "/", "eq": "==", "ne": "!=", "lt": "<",
         "le": "<=", "gt": ">", "ge": ">=", "and": "&&", "or": "||"}


def c_literal(value, type_: Type) -> str:
    if type_ is Type.BOOL:
        return "true" if value else "false"
    if type_ is Type.INT:
        return str(int(value)) if value != -2**31 else "(-2147483647 - 1)"
    v = float(value)
    if v == float("inf"):
        return "fg::inf()"
    if v == float("-inf"):
        return "(-fg::inf())"
    if v != v:
        return "fg::nan()"
    text = repr(v)
    if "e" not in text and "." not in text:
        text += ".0"
    return text + "f"


def let_name(name: str) -> str:
    return f"let_{name}"


def _is_leaf(e: Expr) -> bool:
    return isinstance(e, (Const, Var, ScalarParam, Local)) or isinstance(e, ToFloat) and _is_leaf(e.operand)


class Renderer:
    """Renders expressions into statements + a result text, computing repeated
    subexpressions once. Subclasses render into other domains (tile_class.py)."""
    temp_prefix = "t"

    def __init__(self, roots: list[Expr], known: dict[Expr, str] | None = None):
        self.counts: Counter = Counter()
        for root in roots:
            self._count(root)
        self.temps: dict[Expr, str] = dict(known or {})   # known: computed elsewhere
        self.statements: list[str] = []
        self._named = 0

    def _count(self, e: Expr) -> None:
        self.counts[e] += 1
        if self.counts[e] == 1:          # children of a repeated node are counted once
            for c in e.children():
                self._count(c)

    def c_type(self, e: Expr) -> str:
        return C_TYPE[e.type]

    def local_name(self, name: str) -> str:
        return let_name(name)

    def render(self, e: Expr) -> str:
        if e in self.temps:
            return self.temps[e]
        text = self._render(e)
        if self.counts[e] > 1 and not _is_leaf(e):
            name = f"{self.temp_prefix}{self._named}"
            self._named += 1
            self.statements.append(f"const {self.c_type(e)} {name} = {text};")
            self.temps[e] = name
            return name
        return text

    def _render(self, e: Expr) -> str:
        r = self.render
        if isinstance(e, Const):
            return c_literal(e.value, e.type)
        if isinstance(e, Var):
            return e.name
        if isinstance(e, ScalarParam):
            return f"p.{e.name}"
        if isinstance(e, Local):
            return self.local_name(e.name)
        if isinstance(e, Load):
            return f"p.{e.name}.at({', '.join(r(i) for i in e.indices)})"
        if isinstance(e, ToFloat):
            return f"float({r(e.operand)})"
        if isinstance(e, Unary):
            return f"(!{r(e.operand)})" if e.op == "not" else f"(-{r(e.operand)})"
        if isinstance(e, Select):
            return f"({r(e.condition)} ? {r(e.then)} : {r(e.otherwise)})"
        if isinstance(e, Call):
            return f"{FUNCTIONS[e.function].cuda}({', '.join(r(a) for a in e.args)})"
        if isinstance(e, Binary):
            if e.op == "floordiv":
                return f"fg::floordiv({r(e.left)}, {r(e.right)})"
            if e.op == "mod":
                return f"fg::mod({r(e.left)}, {r(e.right)})"
            if e.op == "div":   # float division (fast on the GPU: expr.cuh fdiv)
                return f"fg::fdiv({r(e.left)}, {r(e.right)})"
            if e.type is Type.INT and e.op in ("add", "sub", "mul"):
                # two's-complement wrap, defined behaviour (signed overflow is UB in C++)
                return f"fg::wrap_{e.op}({r(e.left)}, {r(e.right)})"
            return f"({r(e.left)} {_C_OP[e.op]} {r(e.right)})"
        raise TypeError(e)


def render_many(lets: list[tuple[str, Expr]], results: list[Expr], renderer=Renderer,
                known: dict[Expr, str] | None = None) -> tuple[list[str], list[str]]:
    """The statements of a function body that computes `lets` (in order, as named locals)
    and the C texts of `results`; a subexpression used more than once is computed once,
    and one in `known` is read from the given C text."""
    r = renderer([e for _, e in lets] + list(results), known)
    for name, e in lets:
        value = r.render(e)
        r.statements.append(f"const {r.c_type(e)} {r.local_name(name)} = {value};")
    texts = [r.render(e) for e in results]
    return r.statements, texts


def render_body(lets: list[tuple[str, Expr]], result: Expr, renderer=Renderer,
                known: dict[Expr, str] | None = None) -> tuple[list[str], str]:
    statements, (text,) = render_many(lets, [result], renderer, known)
    return statements, text
