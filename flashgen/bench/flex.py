"""A spec as FlexAttention's score_mod and mask_mod (torch.nn.attention.flex_attention).

Both mods run flashgen's reference evaluator on the spec's IR with FlexAttention's index
tensors as the built-in variables, so the translation has the reference's semantics by
construction (int32 arithmetic, clamped tensor reads, the same functions); the CPU tests
compare it with op.reference for every shipped spec. A block-sparse layout (a built-in
pattern's or the call's) becomes a mask_mod term reading the layout at the pair's block.
Dropout has no FlexAttention form."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..reference.evaluate import Evaluator
from ..runtime.arguments import BoundCall
from . import NotExpressible
from .grid import mask_varies


@dataclass(frozen=True)
class FlexForm:
    """What flex_attention takes for one call of a spec."""
    score_mod: Callable | None
    mask_mod: Callable | None
    mask_by_batch: bool        # the BlockMask needs a batch dim (else it broadcasts)
    mask_by_head: bool


def _variables(call: BoundCall, b, h, q_idx, kv_idx) -> dict[str, torch.Tensor]:
    # FlexAttention passes int32 indices to kernels and int64 to create_block_mask on
    # some paths; the language's ints are int32
    _, _, _, Nq, Nk = call.shape
    device = q_idx.device
    return {"b": b.to(torch.int32), "h": h.to(torch.int32), "q_idx": q_idx.to(torch.int32),
            "kv_idx": kv_idx.to(torch.int32),
            "q_len": torch.tensor(Nq, dtype=torch.int32, device=device),
            "kv_len": torch.tensor(Nk, dtype=torch.int32, device=device)}


def translate(call: BoundCall, mask_float_dtype: torch.dtype = torch.float32) -> FlexForm:
    """The call's spec as FlexAttention mods. `mask_float_dtype` is the precision of any
    float arithmetic inside the mask (the kernels use float32); the score is computed in
    FlexAttention's score dtype."""
    spec = call.spec
    if call.dropout_p > 0:
        raise NotExpressible("FlexAttention has no dropout")
    score_mod = mask_mod = None
    if spec.score is not None:
        def score_mod(score, b, h, q_idx, kv_idx):
            variables = _variables(call, b, h, q_idx, kv_idx)
            variables["score"] = score
            return Evaluator(spec, variables, call.params, score.dtype, score.device)(spec.score)
    layout = call.layout
    if spec.mask is not None or layout is not None:
        def mask_mod(b, h, q_idx, kv_idx):
            variables = _variables(call, b, h, q_idx, kv_idx)
            keep = None
            if spec.mask is not None:
                evaluator = Evaluator(spec, variables, call.params, mask_float_dtype, q_idx.device)
                keep = evaluator(spec.mask)
            if layout is not None:
                bs = spec.block_sparse
                head = h if layout.shape[0] > 1 else torch.zeros_like(h)
                blocks = layout[head, q_idx // bs.block_q, kv_idx // bs.block_k]
                keep = blocks if keep is None else keep & blocks
            return keep
    by_batch, by_head = mask_varies(call)
    return FlexForm(score_mod, mask_mod, by_batch, by_head)


def block_mask(form: FlexForm, call: BoundCall, compile: bool = True):
    """The BlockMask of the form's mask_mod (None for none). compile=True builds it with
    a compiled mask_mod, without materialising [Nq, Nk]: what long sequences need."""
    if form.mask_mod is None:
        return None
    from torch.nn.attention.flex_attention import create_block_mask
    B, H, _, Nq, Nk = call.shape
    return create_block_mask(form.mask_mod, B if form.mask_by_batch else None,
                             H if form.mask_by_head else None, Nq, Nk, device=call.q.device,
                             _compile=compile)


def attention(flex_attention, form: FlexForm, call: BoundCall, mask, q, k, v):
    """`flex_attention` (compiled or not) on q, k, v with the form and its BlockMask."""
    _, H, Hkv, _, _ = call.shape
    return flex_attention(q, k, v, score_mod=form.score_mod, block_mask=mask, scale=call.scale,
                          enable_gqa=H != Hkv)
