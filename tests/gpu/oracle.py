"""The GPU oracle: one call of a compiled spec's kernels against its reference.

    max |kernel - ref64| <= 2 * max |ref_lowp - ref64| + floor,

for out, lse, dq, dk, dv and parameter gradients; ref64 is the reference in float64,
ref_lowp the reference in the input dtype, floor = 1e-3 * max |ref64| + 1e-6 covers
outputs that both compute exactly. All three runs see the inputs the kernel sees (q, k,
v and dO rounded to the input dtype, float tables to fp32), so the errors are the
arithmetic's: with float64 inputs only the kernel paid for dO's rounding, which decided
whole-head parameter gradients (dinv_temp) on its own. Fresh random inputs per seed; outputs are poisoned
with NaN before every launch (the caller sets FLASHGEN_POISON); NaN never passes.
test_kernels.py, test_fuzz.py and fuzz.py all judge through `compare`."""
from __future__ import annotations

import torch

from flashgen.runtime.examples import example_inputs

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _leaf(t, dtype=None):
    return t.detach().to(dtype or t.dtype).requires_grad_()


def run(op, q, k, v, dout, params, dtype=None, kernel=False, deterministic=False,
        kv_splits=None, packed=None, param_grads=True, **call):
    """out, lse and the gradients of (q, k, v, float tensor params) for one call; `call`
    holds dropout_p, seed and layout; deterministic and kv_splits go to the kernels.
    packed: (cu_seqlens_q, cu_seqlens_k) of a varlen call (q, k, v packed). param_grads
    False: the float params want no gradient (the kernels without parameter-gradient code)."""
    q, k, v = _leaf(q, dtype), _leaf(k, dtype), _leaf(v, dtype)
    table = _leaf if param_grads else (lambda t, dt: t.detach().to(dt))
    p = {n: (table(t, dtype if dtype == torch.float64 else torch.float32)
             if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
         for n, t in params.items()}
    if kernel and packed:
        out, lse = op.varlen(q, k, v, *packed, return_lse=True, deterministic=deterministic,
                             kv_splits=kv_splits, **call, **p)
    elif kernel:
        out, lse = op(q, k, v, return_lse=True, deterministic=deterministic,
                      kv_splits=kv_splits, **call, **p)
    elif packed:
        out, lse = op.reference_varlen(q, k, v, *packed, return_lse=True, dtype=dtype, **call,
                                       **p)
    else:
        out, lse = op.reference(q, k, v, return_lse=True, dtype=dtype, **call, **p)
    (out.double() * dout.double()).sum().backward()
    grads = {"out": out, "lse": lse, "dq": q.grad, "dk": k.grad, "dv": v.grad}
    grads.update({f"d{n}": t.grad for n, t in p.items() if isinstance(t, torch.Tensor)
                  and t.requires_grad})
    return grads


def error(a, ref):
    """max |a - ref| over the finite elements of ref; the non-finite ones must be equal."""
    a, ref = a.double(), ref.double()
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(a), finite) and torch.equal(a[~finite], ref[~finite]), \
        "-inf (fully masked rows) where the reference has none, or the other way round"
    if not finite.any():
        return 0.0
    return (a[finite] - ref[finite]).abs().max().item()


def low_error(low, ref):
    """The low-precision reference's error, over the elements finite in both: a score
    expression evaluated in fp16 can overflow where float64 (and the kernels' fp32) do
    not (`slopes[h] * kv_idx * 298`), which says nothing of the kernel's accuracy."""
    low, ref = low.double(), ref.double()
    both = torch.isfinite(low) & torch.isfinite(ref)
    return (low[both] - ref[both]).abs().max().item() if both.any() else 0.0


def bound(low, ref, cancellation=0.0):
    """What the kernel may miss ref64 by: twice the low-precision reference's error, plus
    the floor (and, for gradients, the cancellation floor below)."""
    finite = ref[torch.isfinite(ref)]
    return (2 * low_error(low, ref) + 1e-3 * (finite.abs().max().item() if finite.numel() else 0)
            + 1e-6 + cancellation)


def cancellation_floor(q, k, v, dout) -> float:
    """The fp32 rounding the kernels' gradients keep where the exact gradient cancels to 0.
    dS = P (dP - delta) with delta = rowsum(dO * O) (FlashAttention-2's form), where the
    reference's autograd sums P dP instead: when the exact dS is 0 -- one visible key per
    row, a score that no longer depends on q.k -- the reference cancels exactly and the
    kernel keeps the rounding of two length-Dv fp32 dot products, ~2^-24 Dv |dO| |v|,
    carried into dq / dk by |k| / |q|. Tiny beside the low-precision error elsewhere."""
    def top(t):
        return t.double().abs().max().item() if t.numel() else 0.0
    return 2.0**-24 * v.shape[-1] * top(dout) * top(v) * max(1.0, top(q), top(k))


def parameter_floors(op, q, k, v, dout, params, draw_seed, packed=None,
                     **call) -> dict[str, float]:
    """The same fp32 rounding in a float table's gradient. Where the exact dS of a row
    cancels, the kernel keeps e_i = (dP - delta) rounding per row, and sum_j P_ij ds_ij/dt
    = d lse_i / dt carries it into t's gradient as sum_i e_i d lse_i / dt: a slope times
    a constant (`slopes[h] * 129`) over 1400 one-key rows summed ~1e-3 where the
    reference's exact 0 allows nothing. Modelled in float64 as the gradient of
    sum_i e_i lse_i, e_i of random sign and the size of a few fp32 roundings of the row's
    dot product, 2^-24 |dO_i * O_i| (both sums run as trees: MMA k-slices, warp
    shuffles); the largest of three draws, doubled. On that case: floor 6x the error."""
    tables = {n: _leaf(t, torch.float64) for n, t in params.items()
              if isinstance(t, torch.Tensor) and t.is_floating_point()}
    if not tables:
        return {}
    qd, kd, vd = (t.detach().double() for t in (q, k, v))
    others = {n: t for n, t in params.items() if n not in tables}
    if packed:
        out, lse = op.reference_varlen(qd, kd, vd, *packed, return_lse=True,
                                       dtype=torch.float64, **call, **others, **tables)
    else:
        out, lse = op.reference(qd, kd, vd, return_lse=True, dtype=torch.float64, **call,
                                **others, **tables)
    size = 2.0**-24 * (dout.double() * out.detach()).norm(dim=-1)
    if packed:
        size = size.transpose(0, 1)       # [total_q, H] -> lse's [H, total_q]
    size = torch.where(torch.isfinite(lse), size, torch.zeros_like(size))
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    gen = torch.Generator().manual_seed(draw_seed + 7919)
    floors = dict.fromkeys(tables, 0.0)
    for _ in range(3):
        sign = torch.randint(0, 2, size.shape, generator=gen).to(size.device) * 2.0 - 1.0
        grads = torch.autograd.grad((lse * sign * size).sum(), list(tables.values()),
                                    retain_graph=True, allow_unused=True)
        for n, g in zip(tables, grads):
            if g is not None:
                floors[n] = max(floors[n], 2 * g.abs().max().item())
    return {f"d{n}": f for n, f in floors.items()}


def compare(op, dtype, d, B, Hq, Hkv, Nq, Nk, seed, label, *, strided=False,
            deterministic=False, dropout_p=0.0, shared_layout=False, scale=None,
            kv_splits=None, lengths=None, param_grads=True) -> dict:
    """Run the kernels and the references on one random call. Returns a report row:
    {"case": label, <output>: error / bound, ..., "failures": [...]}. lengths: (query
    lengths, key lengths) of B packed sequences: a varlen call (Nq, Nk are ignored; the
    tables are sized by the longest). param_grads: as run's."""
    gen = torch.Generator().manual_seed(seed)
    if lengths is not None:
        B, Nq, Nk = len(lengths[0]), max(lengths[0]), max(lengths[1])
    q, k, v, params, layout = example_inputs(op.spec, B, Hq, Hkv, Nq, Nk, head_dim=d,
                                             dtype=torch.float64, device="cuda", generator=gen)
    call = {} if scale is None else {"scale": scale}
    if dropout_p:
        call.update(dropout_p=dropout_p, seed=(seed, seed % 1000))
    if layout is not None:
        call["layout"] = layout[:1].contiguous() if shared_layout else layout
    dt = DTYPES[dtype]
    dout = torch.randn(B, Hq, Nq, v.shape[-1], generator=gen, dtype=torch.float64).cuda()
    packed = None
    if lengths is not None:   # keep each sequence's first rows, packed [total, H, d]
        def pack(t, lens):
            return torch.cat([t[b, :, :n].transpose(0, 1) for b, n in enumerate(lens)])

        def offsets(lens):
            return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32,
                                device="cuda")
        q, dout = pack(q, lengths[0]), pack(dout, lengths[0])
        k, v = pack(k, lengths[1]), pack(v, lengths[1])
        packed = (offsets(lengths[0]), offsets(lengths[1]))
        call["packed"] = packed
    q, k, v, dout = (t.to(dt).double() for t in (q, k, v, dout))
    params = {n: (t.float().double() if isinstance(t, torch.Tensor) and t.is_floating_point()
                  else t) for n, t in params.items()}
    if strided:   # [B, N, H, d] storage seen as [B, H, N, d]: strided in every dim but the last
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    call["param_grads"] = param_grads
    ref64 = run(op, q, k, v, dout, params, torch.float64, **call)
    low = run(op, q, k, v, dout, params, dt, **call)
    qk, kk, vk = q.to(dt), k.to(dt), v.to(dt)
    if strided:
        assert not qk.is_contiguous() and qk.stride(-1) == 1
    got = run(op, qk, kk, vk, dout.to(dt), params, kernel=True, deterministic=deterministic,
              kv_splits=kv_splits, **call)
    row = {"case": label}
    failures = []
    floor = cancellation_floor(q, k, v, dout)
    floors = parameter_floors(op, q, k, v, dout, params, seed,
                              **{n: c for n, c in call.items() if n != "param_grads"})
    for what, ref in ref64.items():
        if torch.isnan(got[what]).any():
            failures.append(f"{what}: NaN in the kernel's result")
            continue
        try:
            limit = bound(low[what], ref, 0.0 if what in ("out", "lse")
                          else max(floor, floors.get(what, 0.0)))
            err = error(got[what], ref)
        except AssertionError as e:
            failures.append(f"{what}: {e}")
            continue
        row[what] = round(err / limit, 3)
        if not err <= limit:
            failures.append(f"{what}: max error {err:.3g} > bound {limit:.3g}")
    row["failures"] = failures
    return row
