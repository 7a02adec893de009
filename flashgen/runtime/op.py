"""The kernels as PyTorch operators: torch.library custom ops with fake (meta) and
autograd registrations, so torch.compile(fullgraph=True) traces a call as one node.

    flashgen::forward(key, q, k, v, tensors, scalars, scale, dropout_p, seed, layout,
                      deterministic, saved, splits) -> (out, lse, rng, out_f32)
    flashgen::backward(key, dout, q, k, v, out, lse, dlse, tensors, scalars, scale, wanted,
                       deterministic, dropout_p, rng, layout)
                       -> (dq, dk, dv, flat parameter gradients)

`deterministic` only matters to the backward pass (dQ without atomics); `saved` says
what the forward keeps for it (launch.SAVE_*: O in fp32, empty for inference); `splits`
how many CTAs share a Q tile's keys (launch.kv_splits: split-KV decoding). `seed` is
[seed lo, seed hi, offset], or [] to draw from torch's CUDA generator inside the op (so
a compiled graph draws afresh on every run); `rng` (CPU int64 [3]) is what the forward
pass used, and the backward pass draws the same mask from it. `layout` is a runtime
block layout, None for built-in patterns and dense specs.

`key` names a registered spec (flashgen/runtime/launch.py); `tensors` are the spec's
tensor parameters in order (f32 ones as float32, i32 as int32), `scalars` its scalar
parameters (ints and bools as floats, exact below 2**53)."""
from __future__ import annotations

import torch
from torch.autograd import forward_ad

from . import launch


@torch.library.custom_op("flashgen::forward", mutates_args=())
def forward_op(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               tensors: list[torch.Tensor], scalars: list[float], scale: float,
               dropout_p: float, seed: list[int], layout: torch.Tensor | None,
               deterministic: bool, saved: int, splits: int, cu_seqlens: list[torch.Tensor],
               max_seqlens: list[int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = launch.rng_state(seed, dropout_p, q.device)
    out, lse, out_f32 = launch.forward(key, q, k, v, tensors, scalars, scale, dropout_p, rng,
                                       layout, saved, splits, _varlen(cu_seqlens, max_seqlens))
    return out, lse, rng, out_f32


def _varlen(cu_seqlens, max_seqlens) -> launch.Varlen | None:
    """The ops take a packed batch as [cu_q, cu_k] and [max_q, max_k] (empty: padded)."""
    return launch.Varlen(*cu_seqlens, *max_seqlens) if cu_seqlens else None


@forward_op.register_fake
def _(key, q, k, v, tensors, scalars, scale, dropout_p, seed, layout, deterministic, saved,
      splits, cu_seqlens, max_seqlens):
    Dv = v.shape[-1]
    # rows of lse and the fp32 out: [B, H, Nq], or [H, total_q] for a packed batch
    rows = (q.shape[1], q.shape[0]) if cu_seqlens else q.shape[:-1]
    return (q.new_empty(*q.shape[:-1], Dv),
            q.new_empty(rows, dtype=torch.float32),
            torch.empty(3, dtype=torch.int64, device="cpu"),
            q.new_empty((*rows, Dv) if saved else (0,), dtype=torch.float32))


@torch.library.custom_op("flashgen::backward", mutates_args=())
def backward_op(key: str, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                dlse: torch.Tensor | None,
                tensors: list[torch.Tensor], scalars: list[float], scale: float,
                wanted: list[bool], deterministic: bool, dropout_p: float, rng: torch.Tensor,
                layout: torch.Tensor | None, cu_seqlens: list[torch.Tensor],
                max_seqlens: list[int]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return launch.backward(key, dout, q, k, v, out, lse, dlse, tensors, scalars, scale, wanted,
                           deterministic, dropout_p, rng, layout,
                           _varlen(cu_seqlens, max_seqlens))


def _grad_tensors(key: str, tensors):
    """The tensor parameters that can have gradients, by position in `tensors`."""
    var = launch.variant(key)
    names = [p.name for p in var.spec.params if p.is_tensor]
    return [names.index(n) for n in var.grad_params]


@backward_op.register_fake
def _(key, dout, q, k, v, out, lse, dlse, tensors, scalars, scale, wanted, deterministic, dropout_p,
      rng, layout, cu_seqlens, max_seqlens):
    size = sum(tensors[i].numel() for i, w in zip(_grad_tensors(key, tensors), wanted) if w)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty(size, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    (key, q, k, v, tensors, scalars, scale, dropout_p, seed, layout, deterministic, saved,
     _splits, cu_seqlens, max_seqlens) = inputs
    out, lse, rng, out_f32 = output
    ctx.mark_non_differentiable(rng, out_f32)
    # outputs the loss does not use come to the backward as None, not as zeros autograd
    # fills: out_f32's alone was a 134 MB fill per training step at d = 128, B N = 16k,
    # H = 16 (30 us of a 1.4 ms causal forward+backward; PERF.md, issue 8's sixteenth step)
    ctx.set_materialize_grads(False)
    ctx.out_shape, ctx.out_dtype = out.shape, out.dtype
    # the backward pass reads O only for delta: in fp32 where the forward kept it
    ctx.save_for_backward(q, k, v, out_f32 if saved else out, lse, rng, layout, *cu_seqlens,
                          *tensors)
    ctx.packed, ctx.max_seqlens = bool(cu_seqlens), max_seqlens
    ctx.key, ctx.scalars, ctx.scale, ctx.deterministic = key, scalars, scale, deterministic
    ctx.dropout_p = dropout_p
    ctx.seed_given = bool(seed)
    ctx.grad_positions = _grad_tensors(key, tensors)
    ctx.wanted = [tensors[i].requires_grad for i in ctx.grad_positions]
    ctx.tensor_count = len(tensors)


def _gradients(ctx, dout, dlse, backward) -> tuple:
    """dq, dk, dv and the tensors' gradients (None where none), by `backward`: the custom
    op under torch.compile, launch.backward itself in eager mode."""
    q, k, v, out, lse, rng, layout, *tensors = ctx.saved_tensors
    cu_seqlens = tensors[:2] if ctx.packed else []
    tensors = tensors[2:] if ctx.packed else tensors
    if dout is None:  # a loss of lse alone
        dout = torch.zeros(ctx.out_shape, dtype=ctx.out_dtype, device=q.device)
    # the kernels compute delta = rowsum(dO * O) - dlse themselves (delta_kernel)
    if dlse is not None:
        dlse = dlse.float().contiguous()
    wanted = ctx.wanted
    dq, dk, dv, flat = backward(ctx.key, dout.contiguous(), q, k, v, out, lse, dlse,
                                tensors, ctx.scalars, ctx.scale, wanted, ctx.deterministic,
                                ctx.dropout_p, rng, layout, cu_seqlens, ctx.max_seqlens)
    grads: list[torch.Tensor | None] = [None] * ctx.tensor_count
    at = 0
    for i, want in zip(ctx.grad_positions, wanted):
        if want:
            n = tensors[i].numel()
            grads[i] = flat[at:at + n].view(tensors[i].shape)
            at += n
    return dq, dk, dv, grads


def _backward(ctx, dout, dlse, _drng, _dout_f32):
    dq, dk, dv, grads = _gradients(ctx, dout, dlse, backward_op)
    # a float list has no gradient: None, except that an empty list must come back as []
    # (torch.library flattens inputs and outputs with one tree structure)
    no_scalar_grads = None if ctx.scalars else []
    no_seed_grad = None if ctx.seed_given else []
    no_cu_grads = [None, None] if ctx.packed else []
    no_max_grads = None if ctx.packed else []
    return (None, dq, dk, dv, grads, no_scalar_grads, None, None, no_seed_grad, None, None,
            None, None, no_cu_grads, no_max_grads)


forward_op.register_autograd(_backward, setup_context=_setup_context)


def _eager_forward(key, q, k, v, tensors, scalars, scale, dropout_p, seed, layout, saved,
                   splits, cu_seqlens, max_seqlens):
    """The forward kernels in eager mode: (out, lse, rng, out_f32), as flashgen::forward."""
    rng = launch.rng_state(seed, dropout_p, q.device)
    out, lse, out_f32 = launch.forward(key, q, k, v, tensors, scalars, scale, dropout_p, rng,
                                       layout, saved, splits, _varlen(cu_seqlens, max_seqlens))
    return out, lse, rng, out_f32


class _EagerAttention(torch.autograd.Function):
    """The same forward and backward without torch.library's dispatch, for eager mode:
    a custom op's Python wrappers (argument schema, pytree flattening, the autograd
    wrapper) cost ~100 us a call, forward and backward each, which in a small model's
    training step came to more than the kernels' own time (PERF.md, step 12)."""

    @staticmethod
    def forward(ctx, key, q, k, v, scalars, scale, dropout_p, seed, layout, deterministic,
                saved, splits, cu_seqlens, max_seqlens, *tensors):
        out, lse, rng, out_f32 = _eager_forward(key, q, k, v, list(tensors), scalars, scale,
                                                dropout_p, seed, layout, saved, splits,
                                                cu_seqlens, max_seqlens)
        _setup_context(ctx, (key, q, k, v, list(tensors), scalars, scale, dropout_p, seed,
                             layout, deterministic, saved, splits, cu_seqlens, max_seqlens),
                       (out, lse, rng, out_f32))
        return out, lse, rng, out_f32

    @staticmethod
    def backward(ctx, dout, dlse, _drng, _dout_f32):
        def run(*args):
            *args, cu_seqlens, max_seqlens = args
            return launch.backward(*args, _varlen(cu_seqlens, max_seqlens))
        dq, dk, dv, grads = _gradients(ctx, dout, dlse, run)
        return (None, dq, dk, dv, *[None] * 10, *grads)


def attention(key: str, q, k, v, tensors: list[torch.Tensor], scalars: list[float],
              scale: float, dropout_p: float, seed: list[int], layout, deterministic: bool,
              saved: int, splits: int, cu_seqlens: list[torch.Tensor] = (),
              max_seqlens: list[int] = ()):
    """flashgen::forward with autograd: the custom op while torch.compile traces (one
    graph node), the autograd.Function above when a gradient may be wanted, else the
    kernels directly (inference). (out, lse, rng, out_f32).
    cu_seqlens / max_seqlens: [cu_q, cu_k] / [max_q, max_k] of a packed batch, else empty."""
    cu_seqlens, max_seqlens = list(cu_seqlens), list(max_seqlens)
    if torch.compiler.is_compiling():
        return forward_op(key, q, k, v, tensors, scalars, scale, dropout_p, seed, layout,
                          deterministic, saved, splits, cu_seqlens, max_seqlens)
    if (not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *tensors)))
            and forward_ad._current_level < 0):
        # inference: no autograd node to build. The Function's apply and context were
        # ~15 % of an inference call's profiled host time on an H200 machine (PERF.md).
        # Under forward-mode AD (dual tensors do not set requires_grad) the Function
        # still runs, and says it has no jvp rather than dropping the tangent.
        return _eager_forward(key, q, k, v, list(tensors), scalars, scale, dropout_p, seed,
                              layout, saved, splits, cu_seqlens, max_seqlens)
    return _EagerAttention.apply(key, q, k, v, scalars, scale, dropout_p, seed, layout,
                                 deterministic, saved, splits, cu_seqlens, max_seqlens,
                                 *tensors)
