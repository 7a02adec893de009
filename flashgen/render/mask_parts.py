"""The mask's table reads, split by the index they vary with.

A kernel evaluates the mask at every element of a partial tile: BM x BN times. A
subexpression that reads a table and depends on the query row alone (`doc[b, q_idx]`)
has only BM distinct values per tile, and one that depends on the key column alone
(`doc[b, kv_idx]`) only BN. The kernels compute those once per row and once per column
of a warp's fragments (templates/kernels/mask.cuh FragmentMask) and the per-element
mask reads them from registers. For a document mask that turns 64 dependent table
reads per thread and tile, each behind a short-circuit branch, into 20 independent ones.

Only subtrees that read a table are split out: index arithmetic is cheaper to redo per
element than to keep in registers. Lifting a read out of `&&`, `||` or `?:` evaluates it
where the spec would not; that is safe because every read is clamped to the table
(expr.cuh TensorRef::at) and nothing in the language traps."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.nodes import AttentionSpec, Expr, Load, Var, inline_lets

ROW, COLUMN = "row", "column"


@dataclass(frozen=True)
class MaskParts:
    expr: Expr                  # the mask, lets inlined
    row: tuple[Expr, ...]       # subtrees that depend on q_idx (or on neither), read once per row
    column: tuple[Expr, ...]    # subtrees that depend on kv_idx, read once per column


def _side(e: Expr) -> str | None:
    """ROW if e does not depend on kv_idx, COLUMN if it does not depend on q_idx (and does
    on kv_idx), None if it depends on both."""
    names = {n.name for n in e.walk() if isinstance(n, Var)}
    if "kv_idx" not in names:
        return ROW
    return COLUMN if "q_idx" not in names else None


def _reads_table(e: Expr) -> bool:
    return any(isinstance(n, Load) for n in e.walk())


def split_mask(spec: AttentionSpec) -> MaskParts | None:
    """The row and column parts of the spec's mask, or None when it has no table read to
    split out (the kernels then evaluate the mask as written)."""
    if spec.mask is None:
        return None
    expr = inline_lets(spec, spec.mask)
    row: dict[Expr, None] = {}
    column: dict[Expr, None] = {}

    def visit(e: Expr) -> None:
        if not _reads_table(e):
            return
        side = _side(e)
        if side is ROW:
            row[e] = None
        elif side is COLUMN:
            column[e] = None
        else:
            for child in e.children():
                visit(child)

    visit(expr)
    if not row and not column:
        return None
    return MaskParts(expr, tuple(row), tuple(column))
