"""A spec's mask and additive score bias over the (b, h, q_idx, kv_idx) grid of one call.

Evaluated with the reference's evaluator, a block of query rows at a time, so that even
N = 131,072 never holds N x N values at once. From it: the visible fraction (what the
FLOP count scales by), whether the visible set is everything or exactly the causal mask
(what SDPA expresses without a mask), and the explicit masks SDPA needs otherwise."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..ir.nodes import AttentionSpec, Expr, inline_lets, uses
from ..reference.attention import rows_evaluator, visible_rows
from ..reference.evaluate import Evaluator
from ..runtime.arguments import BoundCall

# Elements of one row block's [B, H, rows, Nk] tensors: 2^26 keeps the evaluator's int32 and
# float32 temporaries at a few hundred MiB.
CHUNK_ELEMENTS = 1 << 26


def reads(spec: AttentionSpec, e: Expr) -> set[str]:
    """Names of variables and parameters that `e` reads, through its `let`s."""
    return uses(inline_lets(spec, e))


def mask_varies(call: BoundCall) -> tuple[bool, bool]:
    """(by batch, by head): whether the visible set can differ between batch entries and
    between heads; where it cannot, one [Nq, Nk] plane stands for all of them."""
    spec = call.spec
    names = reads(spec, spec.mask) if spec.mask is not None else set()
    by_head = "h" in names or (call.layout is not None and call.layout.shape[0] > 1)
    return "b" in names, by_head


def bias_varies(call: BoundCall) -> tuple[bool, bool]:
    """(by batch, by head) for the score expression's dependence on b and h."""
    names = reads(call.spec, call.spec.score) if call.spec.score is not None else set()
    return "b" in names, "h" in names


def _row_blocks(rows_total: int, row_elements: int) -> Iterator[tuple[int, int]]:
    rows = max(1, CHUNK_ELEMENTS // max(1, row_elements))
    for start in range(0, rows_total, rows):
        yield start, min(rows_total, start + rows)


def _evaluator(call: BoundCall, q0: int, q1: int, float_dtype=torch.float32) -> Evaluator:
    B, H, _, Nq, Nk = call.shape
    return rows_evaluator(call.spec, call.params, B, H, torch.arange(q0, q1), Nq, Nk,
                          call.q.device, float_dtype)


def _visible_rows(call: BoundCall, evaluator: Evaluator, q0: int, q1: int) -> torch.Tensor | None:
    """bool, broadcastable to [B, H, q1 - q0, Nk]: the mask and the block layout of rows
    q0..q1 (None: all visible)."""
    return visible_rows(call.spec, call.layout, evaluator, torch.arange(q0, q1), call.shape[4])


@dataclass(frozen=True)
class Visibility:
    """Which (b, h, q, k) pairs a call computes."""
    fraction: float            # visible pairs / all B*H*Nq*Nk pairs
    is_dense: bool             # every pair is visible
    is_causal: bool            # exactly the pairs with q_idx >= kv_idx (top-left causal)


def visibility(call: BoundCall) -> Visibility:
    """The visible fraction of a call and its two shapes SDPA has flags for, exactly."""
    B, H, _, Nq, Nk = call.shape
    if call.spec.mask is None and call.layout is None:
        return Visibility(1.0, True, Nk <= 1)
    by_batch, by_head = mask_varies(call)
    planes = (B if by_batch else 1) * (H if by_head else 1)
    device = call.q.device
    visible, dense, causal = 0, True, True
    for q0, q1 in _row_blocks(Nq, planes * Nk):
        keep = _visible_rows(call, _evaluator(call, q0, q1), q0, q1)
        keep = keep.expand(torch.broadcast_shapes(keep.shape, (1, 1, q1 - q0, Nk)))
        # a plane that stands for several batch entries or heads counts for each of them
        visible += int(keep.sum()) * (B * H) // (keep.shape[0] * keep.shape[1])
        dense = dense and bool(keep.all())
        q_idx = torch.arange(q0, q1, device=device).view(-1, 1)
        kv_idx = torch.arange(Nk, device=device).view(1, -1)
        causal = causal and bool((keep == (q_idx >= kv_idx)).all())
    return Visibility(visible / (B * H * Nq * Nk), dense, causal)


def mask_shape(call: BoundCall, with_bias: bool) -> tuple[int, int, int, int]:
    """The smallest broadcastable shape of an explicit mask for the call: [B or 1, H or 1,
    Nq, Nk]."""
    B, H, _, Nq, Nk = call.shape
    by_batch, by_head = mask_varies(call)
    if with_bias:
        bias_batch, bias_head = bias_varies(call)
        by_batch, by_head = by_batch or bias_batch, by_head or bias_head
    return (B if by_batch else 1, H if by_head else 1, Nq, Nk)


def explicit_mask(call: BoundCall, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The call's visible set as an SDPA attn_mask: bool (True = attend) when dtype is
    None; else an additive float mask of that dtype holding the score's bias (the score
    expression at score = 0; only meaningful when the score is score + bias) and -inf
    where the pair is hidden."""
    with_bias = dtype is not None
    shape = mask_shape(call, with_bias)
    Bm, Hm, Nq, Nk = shape
    device = call.q.device
    out = torch.empty(shape, dtype=dtype or torch.bool, device=device)
    for q0, q1 in _row_blocks(Nq, Bm * Hm * Nk):
        evaluator = _evaluator(call, q0, q1)
        keep = _visible_rows(call, evaluator, q0, q1)
        rows = out[:, :, q0:q1]
        if not with_bias:
            rows.copy_(keep.expand(rows.shape) if keep is not None else torch.ones_like(rows))
            continue
        bias = torch.zeros((), dtype=torch.float32, device=device)
        if call.spec.score is not None:
            evaluator.variables["score"] = bias
            bias = evaluator(call.spec.score)
        if keep is not None:
            bias = bias.masked_fill(~keep, float("-inf"))
        rows.copy_(bias.expand(rows.shape))
    return out
