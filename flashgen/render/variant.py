"""Checked spec -> the Jinja context of templates/common/variant.cuh.j2 -> CUDA text."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jinja2

from .. import resources
from ..analysis.affine import affine_bias
from ..analysis.derivative import NotDifferentiable, derivative, differentiable_loads
from ..ir.nodes import AttentionSpec, Expr, Load, Local, ParamDecl, Var, inline_lets
from ..ir.pretty import pretty
from ..ir.types import PARAM_TYPES, Type
from .cuda_expr import C_TYPE, render_body, render_many
from .mask_parts import split_mask
from .tile_class import IntervalRenderer, RangeFunctionView, range_function, scans_tables

C_ELEMENT = {"f32": "float", "i32": "int", "bool": "bool"}


@dataclass(frozen=True)
class ParamView:
    c_decl: str
    comment: str
    read: str        # how the launcher fills it from the host's argument arrays


@dataclass(frozen=True)
class GradView:
    """A float tensor parameter read by `score`, and so differentiable."""
    c_decl: str
    name: str
    rank: int


@dataclass(frozen=True)
class FunctionView:
    name: str
    result_type: str
    takes_score: bool
    origin: tuple[str, ...]     # comment lines pointing back to the spec
    statements: tuple[str, ...]
    result: str


@dataclass(frozen=True)
class ParamGradsView:
    add: FunctionView                        # add_param_grads, per element
    flush: FunctionView                      # flush_param_grads, the register sums out
    sums: tuple[tuple[str, str, str], ...]   # GradSums fields: (C type, name, the read)


@dataclass(frozen=True)
class MaskPartView:
    """MaskRow or MaskCol and the function that fills it (mask_parts.py)."""
    struct: str
    function: str
    index: str                              # the built-in it varies with
    fields: tuple[tuple[str, str, str], ...]  # (C type, name, the subtree as the spec reads)
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
    block_sparse: bool
    runtime_tiles: bool         # tile classes from lists built per call (tile_class.scans_tables)
    mask: FunctionView | None   # `mask_at` when the mask is split (mask_parts), else `mask`
    mask_parts: tuple[MaskPartView, MaskPartView] | None
    score: FunctionView | None
    score_grad: FunctionView | None
    bias: FunctionView | None        # score = score + bias, affine in kv_idx (affine.py)
    bias_step: FunctionView | None   # d bias / d kv_idx
    bias_q_step: FunctionView | None  # d bias / d q_idx, where the bias is affine in q_idx too
    bias_varies: bool                # bias_step is not the constant 0
    tile_class: FunctionView | None
    kv_range: RangeFunctionView | None   # the keys the mask may show (analysis/bounds.py)
    q_range: RangeFunctionView | None    # the queries that may see a range of keys
    grads: tuple[GradView, ...]
    param_grads: ParamGradsView | None


def _param(p: ParamDecl, path: str) -> ParamView:
    shape = p.shape_text
    comment = f"param {p.name}: {p.element}{shape}  ({path}:{p.span.line})"
    if p.is_tensor:
        decl = f"fg::TensorRef<{C_ELEMENT[p.element]}, {len(p.shape)}>"
        return ParamView(f"{decl} {p.name}", comment, f"{decl}::read(in)")
    read = {"f32": "in.f32()", "i32": "in.i32()", "bool": "in.i32() != 0"}[p.element]
    return ParamView(f"{C_TYPE[PARAM_TYPES[p.element]]} {p.name}", comment, read)


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
              spans, note: str | None = None, renderer=None) -> FunctionView:
    lets = [(n, spec.let(n).expr) for n in _lets_needed(spec, [expr])]
    if renderer is None:
        statements, result = render_body(lets, expr)
    else:
        # intervals track ints and bools only: float lets are never read there
        lets = [(n, e) for n, e in lets if e.type is not Type.FLOAT]
        statements, result = render_body(lets, expr, renderer)
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
    mask = score = grad = parts = bias = bias_step = bias_q_step = None
    if spec.mask is not None:
        mask, parts = _mask_functions(spec, source_path)
    if spec.score is not None:
        score = _function(spec, source_path, "score", spec.score, True, spec.score_spans)
        grad = _function(spec, source_path, "score_grad", spec.score_derivative, True,
                         spec.score_spans, "d score / d score, derived by flashgen from:")
        affine = affine_bias(spec)
        if affine is not None:
            bias = _function(spec, source_path, "bias", affine.bias, False, spec.score_spans,
                             "the bias the score adds, affine in kv_idx "
                             "(flashgen/analysis/affine.py), of:")
            bias_step = _function(spec, source_path, "bias_step", affine.step, False,
                                  spec.score_spans, "d bias / d kv_idx, derived by flashgen "
                                  "from:")
            if affine.q_step is not None:
                bias_q_step = _function(spec, source_path, "bias_q_step", affine.q_step, False,
                                        spec.score_spans, "d bias / d q_idx, derived by "
                                        "flashgen from:")
    tile_class = kv_range = q_range = None
    if spec.mask is not None:
        tile_class = _function(spec, source_path, "tile_class", spec.mask, False, spec.mask_spans,
                               "the mask over a tile, by interval analysis "
                               "(flashgen/render/tile_class.py), of:", IntervalRenderer)
        origin = _origin(spec, source_path, spec.mask_spans)
        kv_range = range_function(spec, "kv_idx", origin)
        q_range = range_function(spec, "q_idx", origin)
    grads, param_grads = _param_grads(spec, source_path)
    return VariantView(
        name=spec.name, namespace=f"fg_{spec.name}", source_path=source_path,
        line=spec.span.line, summary=tuple(summary),
        params=tuple(_param(p, source_path) for p in spec.params), constants=tuple(constants),
        dropout=spec.dropout, block_sparse=spec.block_sparse is not None,
        runtime_tiles=scans_tables(spec), mask=mask, mask_parts=parts,
        score=score, score_grad=grad, bias=bias, bias_step=bias_step, bias_q_step=bias_q_step,
        bias_varies=bias_step is not None and bias_step.result != "0.0f", tile_class=tile_class, kv_range=kv_range, q_range=q_range, grads=grads,
        param_grads=param_grads)


def _mask_functions(spec: AttentionSpec, path: str):
    """`mask`, or, when its table reads split by row and column (mask_parts.py), `mask_at`
    (the per-element rest) and the two part views."""
    split = split_mask(spec)
    if split is None:
        return _function(spec, path, "mask", spec.mask, False, spec.mask_spans), None
    known, parts = {}, []
    for struct, function, index, prefix, roots in (
            ("MaskRow", "mask_row", "q_idx", "row", split.row),
            ("MaskCol", "mask_col", "kv_idx", "col", split.column)):
        statements, texts = render_many([], list(roots))
        fields = tuple((C_TYPE[e.type], f"v{i}", pretty(e)) for i, e in enumerate(roots))
        known.update({e: f"{prefix}.v{i}" for i, e in enumerate(roots)})
        parts.append(MaskPartView(struct, function, index, fields, tuple(statements),
                                  "{" + ", ".join(texts) + "}"))
    statements, result = render_body([], split.expr, known=known)
    mask_at = FunctionView("mask_at", "bool", False, _origin(spec, path, spec.mask_spans),
                           tuple(statements), result)
    return mask_at, tuple(parts)


def _varies_per_element(load: Load) -> bool:
    """Does the read's element change within a tile (its indices read q_idx or kv_idx)?"""
    return any(isinstance(n, Var) and n.name in ("q_idx", "kv_idx")
               for index in load.indices for n in index.walk())


def _param_grads(spec: AttentionSpec, path: str):
    """The Grads struct, add_param_grads() and flush_param_grads(): for every read of a
    float tensor parameter in `score`, dt * d score / d (that read) goes to the read's
    element. A read whose element is the same over a tile (`slopes[h]`) is summed in a
    register (GradSums) and flushed by one atomic per warp: an atomic per element, all to
    one address, would serialize the whole backward."""
    loads = differentiable_loads(spec)
    if not loads:
        return (), None
    names = list(dict.fromkeys(load.name for load in loads))
    grads = tuple(GradView(f"fg::GradRef<{len(spec.param(n).shape)}> {n}", n,
                           len(spec.param(n).shape)) for n in names)
    score = inline_lets(spec, spec.score)
    results, reads = [], []
    for load in loads:
        try:
            results.append(derivative(score, lambda node, load=load: node == load))
        except NotDifferentiable:     # read under floor(), //, ...: gradient 0, as in torch
            continue
        per_element = _varies_per_element(load)
        if per_element:
            results += list(load.indices)
        reads.append((load, per_element))
    statements, texts = render_many([], results)
    statements = list(statements)
    sums, at = [], 0
    for load, per_element in reads:
        d = texts[at]
        value = "dt" if d == "1.0f" else f"dt * {d}"
        if per_element:
            indices = texts[at + 1:at + 1 + len(load.indices)]
            statements.append(f"if (g.{load.name}.data) g.{load.name}.add({value}, "
                              f"{', '.join(indices)});")
            at += 1 + len(load.indices)
        else:
            statements.append(f"sums.v{len(sums)} += {value};")
            sums.append(load)
            at += 1
    origin = ("dt * d score / d param, for each read of a float tensor parameter in:",
              *_origin(spec, path, spec.score_spans))
    add = FunctionView("add_param_grads", "void", True, origin, tuple(statements), "")
    flush_statements, index_texts = render_many([], [i for load in sums for i in load.indices])
    flush_statements = list(flush_statements)
    at = 0
    for i, load in enumerate(sums):
        indices = index_texts[at:at + len(load.indices)]
        at += len(load.indices)
        flush_statements.append(f"if (g.{load.name}.data) g.{load.name}.add_warp(sums.v{i}, "
                                f"{', '.join(indices)});")
    flush = FunctionView("flush_param_grads", "void", False, (), tuple(flush_statements), "")
    fields = tuple(("float", f"v{i}", pretty(load)) for i, load in enumerate(sums))
    return grads, ParamGradsView(add, flush, fields)


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(resources.templates_dir())),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              autoescape=False)


def render_variant(spec: AttentionSpec, source_path: str) -> str:
    text = environment().get_template("common/variant.cuh.j2").render(
        v=variant_view(spec, source_path))
    return text.rstrip() + "\n"
