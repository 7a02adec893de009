"""Numerics at the edges, on a GPU: non-finite inputs, huge scores, fully masked rows,
fp16 overflow, and offsets past 2^31 elements.

The contract for non-finite inputs (NaN, +-inf in q, k or v): every result that depends
on one is non-finite; every finite result is right (within the oracle's bound of
oracle.py); and nothing is non-finite that the reference, which evaluates the whole
score matrix in IEEE arithmetic, leaves finite. A kernel may leave finite what the
reference spreads NaN to -- a key a query row does not see, in a tile the kernel skips --
since that row does not depend on it."""
import math

import pytest
import torch

import flashgen
from flashgen.runtime.examples import example_inputs

from .oracle import DTYPES, bound, error, run

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setenv("FLASHGEN_POISON", "1")


def _inputs(spec, B, H, N, d, seed, Hkv=None):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, params, _ = example_inputs(spec, B, H, Hkv or H, N, N, head_dim=d,
                                        dtype=torch.float64, device="cuda", generator=gen)
    dout = torch.randn(B, H, N, v.shape[-1], generator=gen, dtype=torch.float64).cuda()
    return q, k, v, dout, params


def _ideal_causal(q, k, v, scale):
    """Causal attention row by row over the keys each row sees, and nothing else: the
    results that depend on a value are exactly the non-finite ones."""
    B, H, N, _ = q.shape
    out = torch.empty_like(v[:, :, :N])
    lse = torch.empty(B, H, N, dtype=q.dtype, device=q.device)
    for i in range(N):
        s = torch.einsum("bhd,bhkd->bhk", q[:, :, i], k[:, :, :i + 1]) * scale
        m = s.amax(-1, keepdim=True)
        e = torch.exp(s - m)
        total = e.sum(-1, keepdim=True)
        out[:, :, i] = torch.einsum("bhk,bhkd->bhd", e / total, v[:, :, :i + 1])
        lse[:, :, i] = (m + total.log()).squeeze(-1)
    return out, lse


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_nan_and_inf_inputs_propagate(dtype):
    op = flashgen.compile("causal")
    N, d = 300, 64
    q, k, v, dout, _ = _inputs(op.spec, 1, 2, N, d, seed=5)
    q[0, 0, 100, 3] = math.nan          # one query row
    q[0, 1, 200, 0] = -math.inf         # scores of row 200 (head 1) go to +-inf
    k[0, 1, 50, 7] = math.inf           # key 50 (head 1): +-inf scores for rows >= 50
    v[0, 0, 20, 5] = math.nan           # value 20 (head 0), column 5
    dt = DTYPES[dtype]
    ref64 = run(op, q, k, v, dout, {}, torch.float64)
    low = run(op, q, k, v, dout, {}, dt)
    got = run(op, q.to(dt), k.to(dt), v.to(dt), dout.to(dt), {}, kernel=True)
    ideal_out, ideal_lse = _ideal_causal(q, k, v, 1 / math.sqrt(d))
    for what, ideal in (("out", ideal_out), ("lse", ideal_lse)):
        kernel_bad = ~torch.isfinite(got[what])
        assert kernel_bad[~torch.isfinite(ideal)].all(), f"{what}: a result that depends on a non-finite input came out finite"
        assert not (kernel_bad & torch.isfinite(ref64[what])).any(), f"{what}: non-finite where the reference is finite"
    assert torch.isnan(got["out"][0, 0, 100]).all() and torch.isnan(got["lse"][0, 0, 100])
    assert torch.isnan(got["out"][0, 0, 20:, 5]).all()
    for what, ref in ref64.items():
        kernel_finite = torch.isfinite(got[what])
        assert not (~kernel_finite & torch.isfinite(ref)).any(), \
            f"{what}: non-finite where the reference is finite"
        ok = kernel_finite & torch.isfinite(ref) & torch.isfinite(low[what])
        if not ok.any():
            continue
        err = (got[what].double() - ref.double())[ok].abs().max().item()
        limit = 2 * (low[what].double() - ref.double())[ok].abs().max().item() \
            + 1e-3 * ref[ok].abs().max().item() + 1e-6
        assert err <= limit, f"{what}: finite results off by {err:.3g} > {limit:.3g}"
    # every gradient that reads the NaN query row is NaN: its dq, and the dk / dv of keys it sees
    assert torch.isnan(got["dq"][0, 0, 100]).all()
    assert (~torch.isfinite(got["dv"][0, 0, :101])).any(-1).all()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_scores_of_1e4_stay_exact(dtype):
    """|score| up to ~1e4: the online softmax subtracts the running max before exp2, so
    nothing overflows; errors stay within the oracle's bound."""
    for name, scale in (("causal", 2.0), ("alibi", 2.0), ("softcap", 1.0)):
        op = flashgen.compile(name)
        d = 64 if 64 in op.spec.head_dims else op.spec.head_dims[0]
        q, k, v, dout, params = _inputs(op.spec, 1, 2, 257, d, seed=7)
        q, k = q * 12, k * 12
        ref64 = run(op, q, k, v, dout, params, torch.float64, scale=scale)
        if name != "softcap":
            assert ref64["lse"].abs().max() > 5e3
        low = run(op, q, k, v, dout, params, DTYPES[dtype], scale=scale)
        dt = DTYPES[dtype]
        got = run(op, q.to(dt), k.to(dt), v.to(dt), dout.to(dt), params, kernel=True, scale=scale)
        for what, ref in ref64.items():
            assert torch.isfinite(got[what]).all(), f"{name} {what}: not finite"
            assert error(got[what], ref) <= bound(low[what], ref), f"{name} {what}"


HIDDEN_ROWS = """attention hidden_rows {
    head_dim = 64
    param lengths: i32[B]
    mask = q_idx >= 40 && causal() && key_padding(lengths)
}"""


def test_fully_masked_rows_give_zero_and_minus_inf_with_finite_gradients():
    op = flashgen.compile(HIDDEN_ROWS)
    q, k, v, dout, _ = _inputs(op.spec, 2, 2, 200, 64, seed=3)
    lengths = torch.tensor([0, 150], dtype=torch.int32, device="cuda")   # batch 0: no keys
    params = {"lengths": lengths}
    ref64 = run(op, q, k, v, dout, params, torch.float64)
    low = run(op, q, k, v, dout, params, torch.bfloat16)
    got = run(op, q.bfloat16(), k.bfloat16(), v.bfloat16(), dout.bfloat16(), params, kernel=True)
    assert (got["out"][0] == 0).all() and (got["out"][1, :, :40] == 0).all()
    assert torch.isneginf(got["lse"][0]).all() and torch.isneginf(got["lse"][1, :, :40]).all()
    for what in ("dq", "dk", "dv"):
        assert torch.isfinite(got[what]).all(), what
        assert (got[what][0] == 0).all(), f"{what}: batch 0 sees nothing, its gradients are 0"
    for what, ref in ref64.items():
        assert error(got[what], ref) <= bound(low[what], ref), what


def _saturated_fp16(got, ref64):
    """got (fp16) against ref64 rounded to fp16, which is +-inf past 65504: exact in
    which elements overflow (away from the threshold), close elsewhere."""
    ref = ref64.double()
    clearly_over = ref.abs() > 65504 * 1.01
    clearly_under = ref.abs() < 65504 * 0.99
    g = got.double()
    assert torch.isinf(g[clearly_over]).all() and \
        torch.equal(torch.sign(g[clearly_over]), torch.sign(ref[clearly_over]))
    assert torch.isfinite(g[clearly_under]).all()
    return clearly_over.sum().item(), clearly_under


def test_fp16_outputs_saturate_as_the_reference():
    """Outputs past fp16's range become +-inf, as the reference's result rounded to fp16:
    out through dropout's 1 / (1 - p), gradients through a large dO."""
    op = flashgen.compile("attention big { head_dim = 64  dtype = fp16  dropout }")
    q, k, v, dout, _ = _inputs(op.spec, 1, 2, 256, 64, seed=11)
    q = q * 4                                          # sharp rows: the kept share varies
    v = 50000 + 15000 * torch.rand_like(v)            # out ~ 57500 / (1 - p) * kept share
    dout = torch.full_like(dout, 50000.0)
    call = {"dropout_p": 0.5, "seed": (3, 0)}
    ref64 = run(op, q, k, v, dout, {}, torch.float64, **call)
    got = run(op, q.half(), k.half(), v.half(), dout.half(), {}, kernel=True, **call)
    over_out, under = _saturated_fp16(got["out"], ref64["out"])
    assert over_out > 0 and under.any()
    over_dv, _ = _saturated_fp16(got["dv"], ref64["dv"])
    assert over_dv > 0


def test_offsets_past_2_31_elements():
    """q, k, v whose second head starts 2^31 elements into one buffer: every offset is
    64-bit (a 32-bit one would wrap and read the first head)."""
    op = flashgen.compile("causal")
    N, d, far = 128, 64, 2**31
    q, k, v, dout, _ = _inputs(op.spec, 1, 2, N, d, seed=13)
    buf = torch.zeros(far + 3 * N * d, dtype=torch.bfloat16, device="cuda")
    views = []
    for i, t in enumerate((q, k, v)):
        view = buf.as_strided((1, 2, N, d), (0, far, d, 1), storage_offset=i * N * d)
        view.copy_(t.bfloat16())
        views.append(view)
    out = op(*views)
    want = op(*(t.bfloat16().contiguous() for t in (q, k, v)))
    assert torch.equal(out, want)
    leaves = [t.detach().requires_grad_() for t in views]
    op(*leaves).backward(dout.bfloat16())
    dense = [t.bfloat16().contiguous().requires_grad_() for t in (q, k, v)]
    op(*dense).backward(dout.bfloat16())
    for a, b in zip(leaves, dense):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-2, atol=1e-2)
