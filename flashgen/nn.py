"""Attention layers for nn.Module code, built from a spec.

    layer = flashgen.nn.MultiheadAttention("alibi", embed_dim=2048, num_heads=16,
                                           params={"slopes": alibi_slopes(16)})
    y = layer(x)                                  # x [B, N, 2048] -> [B, N, 2048]

`SpecAttention` is the attention alone (q, k, v [B, H, N, d] in, [B, H, N, dv] out);
`MultiheadAttention` adds the q/k/v and output projections around it (grouped-query
attention with num_kv_heads). The spec's tensor parameters live on the module: as
buffers (moved and saved with it), or as nn.Parameters that train by backprop when
named in `learnable` (a relative-bias table, ALiBi slopes, a temperature). Parameters
that change per call (a batch's document lengths) are passed to forward() instead.

On CUDA tensors the layer runs the spec's kernels; on the CPU it runs the spec's
reference (PyTorch ops, autograd included), so a model can be built, checked and
debugged on a machine without a GPU."""
from __future__ import annotations

import os

import torch
from torch import nn

from . import api
from .ir.nodes import AttentionSpec, ParamDecl


class SpecAttention(nn.Module):
    """Attention as a spec defines it, with the spec's tensor parameters held by the module.

    spec: a path, spec text, a shipped spec's name, or a checked AttentionSpec.
    params: initial values, by name: a tensor for a tensor parameter (copied into a
        buffer or a learnable nn.Parameter, fp32 for f32 tables), a number for a scalar
        (kept as an attribute). A float table named in `learnable` and not given starts
        at zeros when its shape is known from `num_heads` and constants.
    learnable: names of float tensor parameters to train (nn.Parameter); the other
        tensor parameters are buffers.
    dropout: the attention dropout probability in training mode (0 in eval mode); the
        spec needs a `dropout` line.
    deterministic: bit-identical gradients run to run (the kernels' dQ without atomics)."""

    def __init__(self, spec: str | os.PathLike | AttentionSpec, *, name: str | None = None,
                 num_heads: int | None = None, params: dict | None = None,
                 learnable: tuple[str, ...] | list[str] = (), dropout: float = 0.0,
                 deterministic: bool = False, device=None):
        super().__init__()
        self.op = (api.AttentionOp(spec) if isinstance(spec, AttentionSpec)
                   else api.compile(spec, name))
        self.spec = self.op.spec
        self.dropout = float(dropout)
        self.deterministic = deterministic
        if self.dropout and not self.spec.dropout:
            raise ValueError(f"'{self.spec.name}' has no dropout; add a `dropout` line to the "
                             f"spec to train with dropout={self.dropout}")
        declared = {p.name: p for p in self.spec.params}
        params = dict(params or {})
        for n in [*params, *learnable]:
            if n not in declared:
                raise ValueError(f"'{self.spec.name}' has no parameter '{n}'; its parameters: "
                                 f"{', '.join(declared) or 'none'}")
        self._scalars: dict[str, float | int | bool] = {}
        self._tensor_names: list[str] = []
        for p in self.spec.params:
            value = params.get(p.name)
            if not p.is_tensor:
                if p.name in learnable:
                    raise ValueError(f"'{p.name}' is a scalar; only float tensor parameters "
                                     "can be learnable (declare it as f32[H] to learn it per head)")
                if value is not None:
                    self._scalars[p.name] = value
                continue
            if p.name in learnable and p.element != "f32":
                raise ValueError(f"'{p.name}' is {p.element}{p.shape_text}; only f32 tables "
                                 "can be learnable")
            if value is None:
                if p.name not in learnable:
                    continue          # given per call (per-batch tables such as lengths)
                value = torch.zeros(_known_shape(p, num_heads))
            tensor = torch.as_tensor(value, device=device)
            if p.element == "f32":
                tensor = tensor.to(torch.float32)
            tensor = tensor.detach().clone()
            if p.name in learnable:
                self.register_parameter(p.name, nn.Parameter(tensor))
            else:
                self.register_buffer(p.name, tensor)
            self._tensor_names.append(p.name)

    def extra_repr(self) -> str:
        held = ", ".join(self._tensor_names)
        return (f"spec={self.spec.name}" + (f", dropout={self.dropout}" if self.dropout else "")
                + (f", tensors=[{held}]" if held else ""))

    def forward(self, q, k, v, *, scale=None, seed=None, layout=None, return_lse=False,
                **params):
        """q [B, H, Nq, d], k [B, Hkv, Nk, d], v [B, Hkv, Nk, dv]; `params` adds or
        overrides the spec's parameters for this call."""
        call = {**self._scalars, **{n: getattr(self, n) for n in self._tensor_names}, **params}
        dropout_p = self.dropout if self.training else 0.0
        if q.is_cuda:
            return self.op(q, k, v, scale=scale, dropout_p=dropout_p, seed=seed, layout=layout,
                           return_lse=return_lse, deterministic=self.deterministic, **call)
        return self.op.reference(q, k, v, scale=scale, dropout_p=dropout_p, seed=seed,
                                 layout=layout, return_lse=return_lse, **call)


class MultiheadAttention(nn.Module):
    """x [B, N, embed_dim] -> [B, N, embed_dim]: q/k/v projections, the spec's attention
    over num_heads query heads and num_kv_heads key/value heads (grouped-query attention
    when fewer), and the output projection. The head dim, embed_dim // num_heads, must be
    one of the spec's. forward(x, context=None): self-attention, or cross-attention with
    keys and values from `context` [B, M, kv_dim].

    The spec's arguments (params, learnable, dropout, deterministic, name) are
    SpecAttention's."""

    def __init__(self, spec, embed_dim: int, num_heads: int, *, num_kv_heads: int | None = None,
                 kv_dim: int | None = None, bias: bool = False, name: str | None = None,
                 params: dict | None = None, learnable=(), dropout: float = 0.0,
                 deterministic: bool = False, device=None, dtype=None):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads "
                             f"{num_kv_heads}")
        self.attention = SpecAttention(spec, name=name, num_heads=num_heads, params=params,
                                       learnable=learnable, dropout=dropout,
                                       deterministic=deterministic, device=device)
        head_dim = embed_dim // num_heads
        spec_ = self.attention.spec
        if head_dim not in spec_.head_dims:
            raise ValueError(f"head dim {embed_dim} // {num_heads} = {head_dim} is not one of "
                             f"'{spec_.name}''s head dims {list(spec_.head_dims)}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.value_dim = spec_.value_dim_for(head_dim)
        kv_dim = kv_dim or embed_dim
        factory = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(kv_dim, num_kv_heads * head_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(kv_dim, num_kv_heads * self.value_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(num_heads * self.value_dim, embed_dim, bias=bias, **factory)

    def forward(self, x, context=None, **params):
        B, N, _ = x.shape
        source = x if context is None else context
        M = source.shape[1]
        # [B, N, H * d] viewed as [B, H, N, d]: strided, which the kernels take as it is
        q = self.q_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(source).view(B, M, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(source).view(B, M, self.num_kv_heads, self.value_dim).transpose(1, 2)
        out = self.attention(q, k, v, **params)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, self.num_heads * self.value_dim))


def _known_shape(p: ParamDecl, num_heads: int | None) -> tuple[int, ...]:
    """A table's shape from its declaration when it names only H and constants."""
    shape = []
    for dim in p.shape:
        if dim.symbol is None:
            shape.append(dim.size)
        elif dim.symbol == "H" and num_heads is not None:
            shape.append(num_heads)
        else:
            fix = f"pass params={{'{p.name}': tensor}}"
            if dim.symbol == "H":
                fix += " or num_heads=..."
            raise ValueError(f"'{p.name}: {p.element}{p.shape_text}' needs an initial value "
                             f"(its size {dim.symbol} is not known here): {fix}")
    return tuple(shape)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's head slopes (Press et al., 2022): 2^(-8 h / H) for h = 1..H, fp32 [H]."""
    return 2.0 ** (-8.0 * torch.arange(1, num_heads + 1, dtype=torch.float32) / num_heads)


__all__ = ["MultiheadAttention", "SpecAttention", "alibi_slopes"]
