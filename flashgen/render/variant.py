"""Checked spec -> the Jinja context of templates/common/variant.cuh.j2 -> CUDA text."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jinja2

from .. import resources
from ..ir.nodes import AttentionSpec, Expr, Local, ParamDecl
from ..ir.pretty import pretty
from ..ir.types import PARAM_TYPES
from .cuda_expr import C_TYPE, render_body

C_ELEMENT = {"f32": "float", "i32": "int", "bool": "bool"}


@dataclass(frozen=True)
class ParamView:
    c_decl: str
    comment: str


@dataclass(frozen=True)
class FunctionView:
    name: str
    result_type: str
    takes_score: bool
    origin: tuple[str, ...]     # comment lines pointing back to the spec
    statements: tuple[str, ...]
    result: str


@dataclass(frozen=True)
class VariantView:
    name: str
    namespace: str
    source_path: str
    line: int
    summary: tuple[str, ...]
    params: tuple[ParamView, ...]
    constants: tuple[tuple[str, tuple[str, str]], ...]
    dropout: bool
    mask: FunctionView | None
    score: FunctionView | None
    score_grad: FunctionView | None


def _param(p: ParamDecl, path: str) -> ParamView:
    shape = p.shape_text
    comment = f"param {p.name}: {p.element}{shape}  ({path}:{p.span.line})"
    if p.is_tensor:
        return ParamView(f"fg::TensorRef<{C_ELEMENT[p.element]}, {len(p.shape)}> {p.name}", comment)
    return ParamView(f"{C_TYPE[PARAM_TYPES[p.element]]} {p.name}", comment)


def _lets_needed(spec: AttentionSpec, roots: list[Expr]) -> list[str]:
    """The lets the roots read, directly or through other lets, in declaration order."""
    needed: set[str] = set()
    stack = [n.name for r in roots for n in r.walk() if isinstance(n, Local)]
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack += [n.name for n in spec.let(name).expr.walk() if isinstance(n, Local)]
    return [let.name for let in spec.lets if let.name in needed]


def _origin(spec: AttentionSpec, path: str, spans) -> tuple[str, ...]:
    lines = []
    for span in spans:
        for n in range(span.line, span.end_line + 1):
            lines.append(f"{path}:{n}: {spec.source.line(n).strip()}")
    return tuple(dict.fromkeys(lines))


def _function(spec: AttentionSpec, path: str, name: str, expr: Expr, takes_score: bool,
              spans, note: str | None = None) -> FunctionView:
    lets = [(n, spec.let(n).expr) for n in _lets_needed(spec, [expr])]
    statements, result = render_body(lets, expr)
    origin = _origin(spec, path, spans)
    if note:
        origin = (note,) + origin
    return FunctionView(name, C_TYPE[expr.type], takes_score, origin, tuple(statements), result)


def variant_view(spec: AttentionSpec, source_path: str) -> VariantView:
    summary = [f"head_dim {', '.join(map(str, spec.head_dims))}"
               + (f", value_dim {spec.value_dim}" if spec.value_dim else "")
               + f"; dtype {', '.join(spec.dtypes)}"]
    if spec.mask is not None:
        summary.append(f"mask  = {pretty(spec.mask)}")
    if spec.score is not None:
        summary.append(f"score = {pretty(spec.score)}")
    constants = []
    if spec.block_sparse is not None:
        bs = spec.block_sparse
        summary.append(f"block_sparse = {bs.pattern} ({bs.block_q} x {bs.block_k})")
        constants += [("kBlockQ", ("int", str(bs.block_q))), ("kBlockK", ("int", str(bs.block_k)))]
    mask = score = grad = None
    if spec.mask is not None:
        mask = _function(spec, source_path, "mask", spec.mask, False, spec.mask_spans)
    if spec.score is not None:
        score = _function(spec, source_path, "score", spec.score, True, spec.score_spans)
        grad = _function(spec, source_path, "score_grad", spec.score_derivative, True,
                         spec.score_spans, "d score / d score, derived by flashgen from:")
    return VariantView(
        name=spec.name, namespace=f"fg_{spec.name}", source_path=source_path,
        line=spec.span.line, summary=tuple(summary),
        params=tuple(_param(p, source_path) for p in spec.params), constants=tuple(constants),
        dropout=spec.dropout, mask=mask, score=score, score_grad=grad)


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(resources.templates_dir())),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              autoescape=False)


def render_variant(spec: AttentionSpec, source_path: str) -> str:
    text = environment().get_template("common/variant.cuh.j2").render(
        v=variant_view(spec, source_path))
    return text.rstrip() + "\n"
