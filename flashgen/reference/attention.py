"""The executable semantics of a spec: the definition every kernel is tested against.

    S     = scale * Q K^T                      (per query head h; K, V of head h // (Hq/Hkv))
    S'    = score expression of S              (`score` = S)
    S'    = -inf where the mask is false or the block layout is zero
    P     = softmax(S') over keys;  lse = logsumexp(S')
    P     = P * keep / (1 - p)                 (dropout, Philox mask; lse unchanged)
    O     = P V

A row with no visible key gives O = 0 and lse = -inf, never NaN (gradients too).
Runs on any device, in float64, float32, or the input's own low precision."""
from __future__ import annotations

import dataclasses

import torch

from ..ir.nodes import AttentionSpec
from ..runtime.arguments import WHOLE, BoundCall, Frame, bind
from .evaluate import Evaluator
from .philox import keep_mask, resolve_seed


def grid_variables(B: int, H: int, Nq: int, Nk: int, device,
                   frame: Frame = WHOLE) -> dict[str, torch.Tensor]:
    """The built-in index variables, shaped to broadcast over [B, H, Nq, Nk]: the spec's
    indices and lengths of the call's rows (frame: a shard of longer sequences)."""
    def ar(n, shape, first=0):
        return torch.arange(first, first + n, dtype=torch.int32, device=device).view(shape)
    return {"b": ar(B, (B, 1, 1, 1)), "h": ar(H, (1, H, 1, 1)),
            "q_idx": ar(Nq, (1, 1, Nq, 1), frame.q_first),
            "kv_idx": ar(Nk, (1, 1, 1, Nk), frame.kv_first),
            "q_len": torch.tensor(Nq + frame.q_extra, dtype=torch.int32, device=device),
            "kv_len": torch.tensor(Nk + frame.kv_extra, dtype=torch.int32, device=device)}


def rows_evaluator(spec: AttentionSpec, params: dict, B: int, H: int, q_rows: torch.Tensor,
                   Nq: int, Nk: int, device, dtype: torch.dtype = torch.float32) -> Evaluator:
    """An evaluator over the given query rows only (q_rows: int [R]) of a call with Nq
    rows, so that a long call can be evaluated a block of rows at a time."""
    variables = grid_variables(B, H, Nq, Nk, device)
    variables["q_idx"] = q_rows.to(device=device, dtype=torch.int32).view(1, 1, -1, 1)
    return Evaluator(spec, variables, params, dtype, device)


def visible_rows(spec: AttentionSpec, layout: torch.Tensor | None, evaluator: Evaluator,
                 q_rows: torch.Tensor, Nk: int, kv_first: int = 0) -> torch.Tensor | None:
    """bool, broadcastable to [B, H, R, Nk]: the mask and block layout together at the
    evaluator's query rows q_rows (the layout's indices) and keys kv_first.. (None: all
    visible)."""
    keep = evaluator(spec.mask) if spec.mask is not None else None
    if layout is not None:
        bs = spec.block_sparse
        rows = q_rows.to(layout.device).long() // bs.block_q
        cols = torch.arange(kv_first, kv_first + Nk, device=layout.device) // bs.block_k
        blocks = layout[:, rows][:, :, cols].unsqueeze(0)           # [1, H or 1, R, Nk]
        keep = blocks if keep is None else keep & blocks
    return keep


def visible(spec: AttentionSpec, call: BoundCall, evaluator: Evaluator) -> torch.Tensor | None:
    """bool [B or 1, H or 1, Nq, Nk]: the mask and block layout together (None: all visible)."""
    _, _, _, Nq, Nk = call.shape
    f = call.frame or WHOLE
    return visible_rows(spec, call.layout, evaluator,
                        torch.arange(f.q_first, f.q_first + Nq, device=call.q.device), Nk,
                        f.kv_first)


def run(call: BoundCall, dtype: torch.dtype | None = None, return_lse: bool = False):
    spec = call.spec
    B, H, Hkv, Nq, Nk = call.shape
    dtype = dtype or call.q.dtype
    device = call.q.device
    q, k, v = (t.to(dtype) for t in (call.q, call.k, call.v))
    if Nk == 0:      # rows with no key at all are fully masked rows: O = 0, lse = -inf
        # an empty sum: exact zeros that keep q in the graph (its gradient is 0)
        out = q[..., :0].sum(-1, keepdim=True).expand(B, H, Nq, v.shape[-1])
        lse = q.new_full((B, H, Nq), float("-inf"))
        return (out, lse) if return_lse else out
    params = {n: (p.to(dtype) if isinstance(p, torch.Tensor) and p.is_floating_point() else p)
              for n, p in call.params.items()}
    group = H // Hkv
    if group > 1:                                      # GQA: head h reads kv head h // group
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * call.scale
    # one evaluator for mask and score, so the `let`s are computed once
    variables = grid_variables(B, H, Nq, Nk, device, call.frame or WHOLE)
    variables["b"] = variables["b"] + call.first_batch   # a packed sequence run alone
    hidden = _HiddenPairs((B, H, Nq, Nk))
    evaluator = Evaluator(spec, variables, params, dtype, device, load_hook=hidden.guard)
    if spec.score is not None:
        variables["score"] = hidden.guard(s) if s.requires_grad else s
        s = evaluator(spec.score).expand(B, H, Nq, Nk)
    keep = visible(spec, call, evaluator)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    # softmax that gives 0 (not NaN) for a row with no visible key, in values and gradients;
    # a row with a NaN or +inf score gives NaN (out and lse), as IEEE arithmetic does
    row_max = s.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
    e = torch.exp(s - row_max)
    hidden.pairs = e.detach() == 0
    total = e.sum(dim=-1, keepdim=True)
    empty = total == 0
    p = e / torch.where(empty, torch.ones_like(total), total)
    if call.dropout_p > 0:
        seed, offset = resolve_seed(call.seed, device)
        drop_keep = keep_mask(seed, offset, call.dropout_p, B, H, Nq, Nk, device,
                              first_batch=call.first_batch, frame=call.frame)
        p = p * drop_keep.to(dtype) / (1.0 - call.dropout_p)
    out = torch.matmul(p, v)
    if not return_lse:
        return out
    lse = torch.where(empty, torch.full_like(total, float("-inf")),
                      torch.log(torch.where(empty, torch.ones_like(total), total)) + row_max)
    return out, lse.squeeze(-1)


class _HiddenPairs:
    """Pairs whose probability is 0 (masked, a -inf score, or underflow) contribute no
    gradient, whatever the score expression computed there. Autograd alone would give
    0 * inf = NaN where a score is -inf and a parameter multiplies it (`(if c then score
    else -inf) * t[h]`); the kernels skip such pairs. `guard` wraps the score and every
    float table read, over the whole grid, so that their gradients are 0 at those pairs;
    `pairs` is set once the softmax has computed them."""

    def __init__(self, grid):
        self.grid = grid
        self.pairs: torch.Tensor | None = None

    def guard(self, value: torch.Tensor) -> torch.Tensor:
        return _ZeroGradWhereHidden.apply(value.expand(self.grid), self)


class _ZeroGradWhereHidden(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, hidden):
        ctx.hidden = hidden
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        pairs = ctx.hidden.pairs
        return (grad if pairs is None else grad.masked_fill(pairs, 0.0)), None


def reference(spec: AttentionSpec, q, k, v, *, scale=None, dropout_p=0.0, seed=None,
              return_lse=False, layout=None, dtype: torch.dtype | None = None, **params):
    """Attention as the spec defines it, computed with PyTorch ops (autograd works).

    `dtype` computes in another precision than the inputs' (e.g. torch.float64)."""
    call = bind(spec, q, k, v, scale=scale, dropout_p=dropout_p, seed=seed, layout=layout,
                params=params)
    return run(call, dtype=dtype, return_lse=return_lse)


def run_varlen(call: BoundCall, cu_seqlens_q, cu_seqlens_k, dtype: torch.dtype | None = None,
               return_lse: bool = False):
    """A packed batch (arguments.bind_varlen), one sequence at a time: sequence b runs as
    a batch of one with its own rows, lengths and q_len / kv_len, reading row b of the
    tables and drawing batch entry b's dropout (BoundCall.first_batch). out [total_q, H,
    Dv], lse [H, total_q]: the kernels' varlen layout."""
    B, H, Hkv = call.sizes["B"], call.sizes["H"], call.sizes["Hkv"]
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for b in range(B):
        q = call.q[cq[b]:cq[b + 1]].transpose(0, 1).unsqueeze(0)     # [1, H, len, d]
        k = call.k[ck[b]:ck[b + 1]].transpose(0, 1).unsqueeze(0)
        v = call.v[ck[b]:ck[b + 1]].transpose(0, 1).unsqueeze(0)
        sizes = {**call.sizes, "B": 1, "Nq": q.shape[2], "Nk": k.shape[2]}
        one = dataclasses.replace(call, q=q, k=k, v=v, sizes=sizes, first_batch=b)
        out, lse = run(one, dtype=dtype, return_lse=True)
        outs.append(out[0].transpose(0, 1))                            # [len, H, Dv]
        lses.append(lse[0])                                            # [H, len]
    out, lse = torch.cat(outs, dim=0), torch.cat(lses, dim=1)
    return (out, lse) if return_lse else out
