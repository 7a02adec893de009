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

from . import launch


@torch.library.custom_op("flashgen::forward", mutates_args=())
def forward_op(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               tensors: list[torch.Tensor], scalars: list[float], scale: float,
               dropout_p: float, seed: list[int], layout: torch.Tensor | None,
               deterministic: bool, saved: int, splits: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = launch.rng_state(seed, dropout_p, q.device)
    out, lse, out_f32 = launch.forward(key, q, k, v, tensors, scalars, scale, dropout_p, rng,
                                       layout, saved, splits)
    return out, lse, rng, out_f32


@forward_op.register_fake
def _(key, q, k, v, tensors, scalars, scale, dropout_p, seed, layout, deterministic, saved,
      splits):
    B, H, Nq, _ = q.shape
    Dv = v.shape[-1]
    return (q.new_empty(B, H, Nq, Dv),
            q.new_empty(B, H, Nq, dtype=torch.float32),
            torch.empty(3, dtype=torch.int64, device="cpu"),
            q.new_empty((B, H, Nq, Dv) if saved else (0,), dtype=torch.float32))


@torch.library.custom_op("flashgen::backward", mutates_args=())
def backward_op(key: str, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                dlse: torch.Tensor | None,
                tensors: list[torch.Tensor], scalars: list[float], scale: float,
                wanted: list[bool], deterministic: bool, dropout_p: float, rng: torch.Tensor,
                layout: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return launch.backward(key, dout, q, k, v, out, lse, dlse, tensors, scalars, scale, wanted,
                           deterministic, dropout_p, rng, layout)


def _grad_tensors(key: str, tensors):
    """The tensor parameters that can have gradients, by position in `tensors`."""
    var = launch.variant(key)
    names = [p.name for p in var.spec.params if p.is_tensor]
    return [names.index(n) for n in var.grad_params]


@backward_op.register_fake
def _(key, dout, q, k, v, out, lse, dlse, tensors, scalars, scale, wanted, deterministic, dropout_p,
      rng, layout):
    size = sum(tensors[i].numel() for i, w in zip(_grad_tensors(key, tensors), wanted) if w)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty(size, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    (key, q, k, v, tensors, scalars, scale, dropout_p, seed, layout, deterministic, saved,
     _splits) = inputs
    out, lse, rng, out_f32 = output
    ctx.mark_non_differentiable(rng, out_f32)
    # the backward pass reads O only for delta: in fp32 where the forward kept it
    ctx.save_for_backward(q, k, v, out_f32 if saved else out, lse, rng, layout, *tensors)
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
    # the kernels compute delta = rowsum(dO * O) - dlse themselves (delta_kernel)
    if dlse is not None:
        dlse = dlse.float().contiguous()
    wanted = ctx.wanted
    dq, dk, dv, flat = backward(ctx.key, dout.contiguous(), q, k, v, out, lse, dlse,
                                tensors, ctx.scalars, ctx.scale, wanted, ctx.deterministic,
                                ctx.dropout_p, rng, layout)
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
    return (None, dq, dk, dv, grads, no_scalar_grads, None, None, no_seed_grad, None, None,
            None, None)


forward_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same forward and backward without torch.library's dispatch, for eager mode:
    a custom op's Python wrappers (argument schema, pytree flattening, the autograd
    wrapper) cost ~100 us a call, forward and backward each, which in a small model's
    training step came to more than the kernels' own time (PERF.md, step 12)."""

    @staticmethod
    def forward(ctx, key, q, k, v, scalars, scale, dropout_p, seed, layout, deterministic,
                saved, splits, *tensors):
        rng = launch.rng_state(seed, dropout_p, q.device)
        out, lse, out_f32 = launch.forward(key, q, k, v, list(tensors), scalars, scale,
                                           dropout_p, rng, layout, saved, splits)
        _setup_context(ctx, (key, q, k, v, list(tensors), scalars, scale, dropout_p, seed,
                             layout, deterministic, saved, splits), (out, lse, rng, out_f32))
        return out, lse, rng, out_f32

    @staticmethod
    def backward(ctx, dout, dlse, _drng, _dout_f32):
        dq, dk, dv, grads = _gradients(ctx, dout, dlse, launch.backward)
        return (None, dq, dk, dv, *[None] * 8, *grads)


def attention(key: str, q, k, v, tensors: list[torch.Tensor], scalars: list[float],
              scale: float, dropout_p: float, seed: list[int], layout, deterministic: bool,
              saved: int, splits: int):
    """flashgen::forward with autograd: the custom op while torch.compile traces (one
    graph node), the autograd.Function above otherwise. (out, lse, rng, out_f32)."""
    if torch.compiler.is_compiling():
        return forward_op(key, q, k, v, tensors, scalars, scale, dropout_p, seed, layout,
                          deterministic, saved, splits)
    return _EagerAttention.apply(key, q, k, v, scalars, scale, dropout_p, seed, layout,
                                 deterministic, saved, splits, *tensors)
