"""Plausible random inputs for any spec: for demos, tests and benchmarks."""
from __future__ import annotations

import torch

from ..ir.nodes import AttentionSpec
from ..reference.patterns import block_counts


def example_params(spec: AttentionSpec, B: int, Hq: int, Nq: int, Nk: int,
                   generator: torch.Generator | None = None, device="cpu",
                   with_defaults: bool = False) -> dict:
    """A value for every parameter: scalars near a third of the keys, ids sorted (as
    packed documents are), lengths in [1, Nk], float tensors in [0, 0.5)."""
    values = {}
    sizes = {"B": B, "H": Hq, "Hkv": Hq, "Nq": Nq, "Nk": Nk, "N": Nq}
    for p in spec.params:
        if p.default is not None and not with_defaults:
            continue
        if not p.is_tensor:
            values[p.name] = {"f32": 1.0, "i32": max(1, Nk // 3), "bool": True}[p.element]
            continue
        shape = [d.size if d.size is not None else sizes.get(d.symbol, 8) for d in p.shape]
        if p.element == "f32":
            t = torch.rand(shape, generator=generator) * 0.5
        elif p.element == "i32":
            is_length = len(shape) == 1 and shape[0] == B
            high = Nk if is_length else 4
            t = torch.randint(1, high + 1, shape, generator=generator, dtype=torch.int32)
            if len(shape) > 1:
                t = t.sort(dim=-1).values
        else:
            t = torch.rand(shape, generator=generator) < 0.5
        values[p.name] = t.to(device)
    return values


def example_layout(spec: AttentionSpec, Hq: int, Nq: int, Nk: int,
                   generator: torch.Generator | None = None, device="cpu", density=0.5):
    """A random layout for a `layout(...)` spec (None for others)."""
    bs = spec.block_sparse
    if bs is None or bs.pattern != "layout":
        return None
    qb, kb = block_counts(bs, Nq, Nk)
    return (torch.rand(Hq, qb, kb, generator=generator) < density).to(device)


def example_inputs(spec: AttentionSpec, B=2, Hq=4, Hkv=2, Nq=33, Nk=45, head_dim=None,
                   dtype=torch.float64, device="cpu", generator=None):
    """(q, k, v, params, layout) for one call of `spec`."""
    d = head_dim or spec.head_dims[0]
    dv = spec.value_dim_for(d)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device, dtype)
    q, k, v = randn(B, Hq, Nq, d), randn(B, Hkv, Nk, d), randn(B, Hkv, Nk, dv)
    params = example_params(spec, B, Hq, Nq, Nk, generator, device)
    return q, k, v, params, example_layout(spec, Hq, Nq, Nk, generator, device)
