"""The syntax tree of a spec file, as written (before names and types are checked).

Every node carries the Span it came from so that later stages can point at it."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Source, Span

# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Node:
    span: Span = field(compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class IntLit(Node):
    value: int


@dataclass(frozen=True)
class FloatLit(Node):
    value: float


@dataclass(frozen=True)
class BoolLit(Node):
    value: bool


@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class Call(Node):
    function: str
    args: tuple["Expr", ...]
    name_span: Span = field(compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Index(Node):
    tensor: str
    indices: tuple["Expr", ...]
    name_span: Span = field(compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Unary(Node):
    op: str            # "-" or "!"
    operand: "Expr"


@dataclass(frozen=True)
class Binary(Node):
    op: str            # + - * / // % == != < <= > >= && ||
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class IfThenElse(Node):
    condition: "Expr"
    then: "Expr"
    otherwise: "Expr"


Expr = IntLit | FloatLit | BoolLit | Name | Call | Index | Unary | Binary | IfThenElse

# ---------------------------------------------------------------- statements


@dataclass(frozen=True)
class Word(Node):
    """A name or number as written, with its own span (for precise carets)."""
    text: str


@dataclass(frozen=True)
class HeadDim(Node):
    values: tuple[Word, ...]


@dataclass(frozen=True)
class ValueDim(Node):
    value: Word


@dataclass(frozen=True)
class DType(Node):
    names: tuple[Word, ...]


@dataclass(frozen=True)
class Scale(Node):
    expr: Expr


@dataclass(frozen=True)
class Param(Node):
    name: Word
    type: Word
    shape: tuple[Word, ...] | None
    default: Expr | None


@dataclass(frozen=True)
class Let(Node):
    name: Word
    expr: Expr


@dataclass(frozen=True)
class Mask(Node):
    expr: Expr


@dataclass(frozen=True)
class Score(Node):
    expr: Expr


@dataclass(frozen=True)
class Dropout(Node):
    pass


@dataclass(frozen=True)
class Argument(Node):
    name: Word | None
    value: Expr


@dataclass(frozen=True)
class BlockSparse(Node):
    pattern: Word
    args: tuple[Argument, ...]


Statement = HeadDim | ValueDim | DType | Scale | Param | Let | Mask | Score | Dropout | BlockSparse


@dataclass(frozen=True)
class Attention(Node):
    name: Word
    statements: tuple[Statement, ...]


@dataclass(frozen=True)
class Definition(Node):
    """`def NAME(a, b) = expr`: a helper expanded where it is called."""
    name: Word
    params: tuple[Word, ...]
    body: Expr


@dataclass(frozen=True)
class Module:
    source: Source
    attentions: tuple[Attention, ...]
    definitions: tuple[Definition, ...]
