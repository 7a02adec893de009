"""The checked form of a spec (the IR): typed expression trees and the spec record.

This is what the analyses, the renderer and the reference consume. Names are
resolved (a `Var` is a built-in index, a `ScalarParam`/`Load` a runtime parameter,
a `Local` a `let`), helpers are expanded, int->float promotion is an explicit `ToFloat`,
and every node knows its Type and the spec Span it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from ..spec.errors import NOWHERE, Source, Span
from .types import Type

# Built-in variables and their types. `score` exists only inside `score = ...`.
INDEX_VARS = {"b": Type.INT, "h": Type.INT, "q_idx": Type.INT, "kv_idx": Type.INT,
              "q_len": Type.INT, "kv_len": Type.INT}
SCORE_VAR = "score"


@dataclass(frozen=True)
class Expr:
    type: Type = field(kw_only=True)
    span: Span = field(default=NOWHERE, compare=False, repr=False, kw_only=True)

    def children(self) -> tuple["Expr", ...]:
        return ()

    def walk(self) -> Iterator["Expr"]:
        """Every node of the tree, parents first."""
        yield self
        for child in self.children():
            yield from child.walk()


@dataclass(frozen=True)
class Const(Expr):
    value: int | float | bool


@dataclass(frozen=True)
class Var(Expr):
    """A built-in variable: b, h, q_idx, kv_idx, q_len, kv_len or score."""
    name: str


@dataclass(frozen=True)
class ScalarParam(Expr):
    name: str


@dataclass(frozen=True)
class Load(Expr):
    """tensor[i, j, ...]; each index is clamped to [0, size - 1] (the language's rule)."""
    name: str
    indices: tuple[Expr, ...]

    def children(self):
        return self.indices


@dataclass(frozen=True)
class Local(Expr):
    """A reference to a `let` of the same spec."""
    name: str


@dataclass(frozen=True)
class ToFloat(Expr):
    operand: Expr

    def children(self):
        return (self.operand,)


@dataclass(frozen=True)
class Unary(Expr):
    op: str          # "neg" or "not"
    operand: Expr

    def children(self):
        return (self.operand,)


ARITHMETIC = {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "floordiv", "%": "mod"}
COMPARISON = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
LOGICAL = {"&&": "and", "||": "or"}
SYMBOL = {v: k for k, v in {**ARITHMETIC, **COMPARISON, **LOGICAL}.items()}


@dataclass(frozen=True)
class Binary(Expr):
    op: str          # a value of ARITHMETIC, COMPARISON or LOGICAL
    left: Expr
    right: Expr

    def children(self):
        return (self.left, self.right)


@dataclass(frozen=True)
class Call(Expr):
    function: str    # a key of flashgen.ir.functions.FUNCTIONS
    args: tuple[Expr, ...]

    def children(self):
        return self.args


@dataclass(frozen=True)
class Select(Expr):
    """if condition then a else b"""
    condition: Expr
    then: Expr
    otherwise: Expr

    def children(self):
        return (self.condition, self.then, self.otherwise)


# ---------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Dim:
    """One dimension of a tensor parameter: a literal size or a symbol.

    Symbols B, H, Hkv, Nq, Nk bind to the call's shapes; N binds to Nq and Nk, which
    must then be equal; any other symbol is bound by the first tensor that uses it."""
    symbol: str | None = None
    size: int | None = None

    def __str__(self):
        return self.symbol if self.symbol is not None else str(self.size)


@dataclass(frozen=True)
class ParamDecl:
    name: str
    element: str                       # "f32", "i32" or "bool"
    shape: tuple[Dim, ...] | None      # None: a scalar
    default: int | float | bool | None
    span: Span = field(default=NOWHERE, compare=False, repr=False)

    @property
    def type(self) -> Type:
        from .types import PARAM_TYPES
        return PARAM_TYPES[self.element]

    @property
    def is_tensor(self) -> bool:
        return self.shape is not None

    @property
    def shape_text(self) -> str:
        """The shape as written in a spec: "[H, 32]", or "" for a scalar."""
        return f"[{', '.join(map(str, self.shape))}]" if self.shape else ""


@dataclass(frozen=True)
class LetDef:
    name: str
    expr: Expr
    span: Span = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class BlockSparse:
    """A block-level pattern: `layout` (a runtime tensor) or a fixed pattern."""
    pattern: str                       # "layout", "butterfly", "bigbird", "strided"
    block_q: int
    block_k: int
    options: tuple[tuple[str, int], ...] = ()
    span: Span = field(default=NOWHERE, compare=False, repr=False)

    def option(self, name: str) -> int:
        return dict(self.options)[name]


@dataclass(frozen=True)
class AttentionSpec:
    """A checked attention variant: the input of planning, rendering and the reference."""
    name: str
    head_dims: tuple[int, ...]
    value_dim: int | None              # None: equal to the QK head dim
    dtypes: tuple[str, ...]
    scale: float | None                # None: 1/sqrt(head_dim)
    params: tuple[ParamDecl, ...]
    lets: tuple[LetDef, ...]
    mask: Expr | None                  # bool; None: nothing masked
    score: Expr | None                 # float; None: the scaled score unchanged
    score_derivative: Expr | None      # d score / d score (float); None when score is None
    dropout: bool
    block_sparse: BlockSparse | None
    mask_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    score_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    source: Source = field(compare=False, repr=False, default=Source(""))
    span: Span = field(default=NOWHERE, compare=False, repr=False)

    def param(self, name: str) -> ParamDecl:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def value_dim_for(self, head_dim: int) -> int:
        return self.value_dim if self.value_dim is not None else head_dim

    def let(self, name: str) -> LetDef:
        for let in self.lets:
            if let.name == name:
                return let
        raise KeyError(name)


def transform(e: Expr, fn) -> Expr:
    """Rebuild `e` bottom-up; `fn(node)` returns a replacement or None to keep it."""
    import dataclasses
    changes = {}
    for f in dataclasses.fields(e):
        value = getattr(e, f.name)
        if isinstance(value, Expr):
            changes[f.name] = transform(value, fn)
        elif isinstance(value, tuple) and value and isinstance(value[0], Expr):
            changes[f.name] = tuple(transform(v, fn) for v in value)
    rebuilt = dataclasses.replace(e, **changes) if changes else e
    replacement = fn(rebuilt)
    return rebuilt if replacement is None else replacement


def inline_lets(spec: AttentionSpec, e: Expr) -> Expr:
    """e with every `let` replaced by its expression (to analyse or differentiate through
    lets)."""
    def replace(node):
        if isinstance(node, Local):
            return inline_lets(spec, spec.let(node.name).expr)
        return None
    return transform(e, replace)


def uses(e: Expr) -> set[str]:
    """Names of parameters, lets and built-in variables that `e` reads."""
    return {n.name for n in e.walk() if isinstance(n, (Var, ScalarParam, Load, Local))}
