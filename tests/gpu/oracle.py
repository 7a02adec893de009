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


def run(op, q, k, v, dout, params, dtype=None, kernel=False, deterministic=False, **call):
    """out, lse and the gradients of (q, k, v, float tensor params) for one call; `call`
    holds dropout_p, seed and layout."""
    q, k, v = _leaf(q, dtype), _leaf(k, dtype), _leaf(v, dtype)
    p = {n: (_leaf(t, dtype if dtype == torch.float64 else torch.float32)
             if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
         for n, t in params.items()}
    if kernel:
        out, lse = op(q, k, v, return_lse=True, deterministic=deterministic, **call, **p)
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


def compare(op, dtype, d, B, Hq, Hkv, Nq, Nk, seed, label, *, strided=False,
            deterministic=False, dropout_p=0.0, shared_layout=False, scale=None) -> dict:
    """Run the kernels and the references on one random call. Returns a report row:
    {"case": label, <output>: error / bound, ..., "failures": [...]}."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, params, layout = example_inputs(op.spec, B, Hq, Hkv, Nq, Nk, head_dim=d,
                                             dtype=torch.float64, device="cuda", generator=gen)
    call = {} if scale is None else {"scale": scale}
    if dropout_p:
        call.update(dropout_p=dropout_p, seed=(seed, seed % 1000))
    if layout is not None:
        call["layout"] = layout[:1].contiguous() if shared_layout else layout
    dt = DTYPES[dtype]
    dout = torch.randn(B, Hq, Nq, v.shape[-1], generator=gen, dtype=torch.float64).cuda()
    q, k, v, dout = (t.to(dt).double() for t in (q, k, v, dout))
    params = {n: (t.float().double() if isinstance(t, torch.Tensor) and t.is_floating_point()
                  else t) for n, t in params.items()}
    if strided:   # [B, N, H, d] storage seen as [B, H, N, d]: strided in every dim but the last
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    ref64 = run(op, q, k, v, dout, params, torch.float64, **call)
    low = run(op, q, k, v, dout, params, dt, **call)
    qk, kk, vk = q.to(dt), k.to(dt), v.to(dt)
    if strided:
        assert not qk.is_contiguous() and qk.stride(-1) == 1
    got = run(op, qk, kk, vk, dout.to(dt), params, kernel=True, deterministic=deterministic,
              **call)
    row = {"case": label}
    failures = []
    floor = cancellation_floor(q, k, v, dout)
    for what, ref in ref64.items():
        if torch.isnan(got[what]).any():
            failures.append(f"{what}: NaN in the kernel's result")
            continue
        try:
            limit = bound(low[what], ref, floor if what not in ("out", "lse") else 0.0)
            err = error(got[what], ref)
        except AssertionError as e:
            failures.append(f"{what}: {e}")
            continue
        row[what] = round(err / limit, 3)
        if not err <= limit:
            failures.append(f"{what}: max error {err:.3g} > bound {limit:.3g}")
    row["failures"] = failures
    return row
