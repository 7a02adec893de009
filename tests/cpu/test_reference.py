"""The reference against an independent element-by-element implementation, forward and
gradients, for every shipped spec; fully masked rows; GQA; low precision."""
import math

import pytest
import torch

import flashgen
from flashgen.runtime.examples import example_inputs

from . import naive

SHIPPED = sorted(flashgen.shipped())


def _inputs(spec, seed=0, **shape):
    gen = torch.Generator().manual_seed(seed)
    return example_inputs(spec, generator=gen, **shape)


def _naive_tensors(spec, q, k, v, params, layout, **kw):
    out, lse = naive.attention(spec, q, k, v, layout=layout, **kw, **params)
    return torch.tensor(out, dtype=torch.float64), torch.tensor(lse, dtype=torch.float64)


# Shapes small enough for the element-by-element oracle, odd on purpose, with GQA 4:2.
# Block-sparse specs need more than one block, hence their longer sequences.
def _shape(spec, small=dict(B=2, Hq=4, Hkv=2, Nq=11, Nk=13),
           sparse=dict(B=1, Hq=2, Hkv=1, Nq=150, Nk=140)):
    shape = dict(sparse if spec.block_sparse is not None else small)
    if any(d.symbol == "N" for p in spec.params if p.is_tensor for d in p.shape):
        shape["Nk"] = shape["Nq"]           # an `N` dim needs Nq == Nk
    return shape


@pytest.mark.parametrize("name", SHIPPED)
def test_forward_matches_naive(name):
    op = flashgen.compile(name)
    spec = op.spec
    q, k, v, params, layout = _inputs(spec, **_shape(spec))
    extra = {"dropout_p": 0.3, "seed": 1234} if spec.dropout else {}
    out, lse = op.reference(q, k, v, return_lse=True, layout=layout, **extra, **params)
    want_out, want_lse = _naive_tensors(spec, q, k, v, params, layout, **extra)
    torch.testing.assert_close(out, want_out, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lse, want_lse, rtol=1e-9, atol=1e-9)


def _directional_fd(f, x, u, eps=1e-6):
    with torch.no_grad():
        return (f(x + eps * u) - f(x - eps * u)) / (2 * eps)


@pytest.mark.parametrize("name", SHIPPED)
def test_gradients_match_finite_differences_of_naive(name):
    op = flashgen.compile(name)
    spec = op.spec
    shape = _shape(spec, dict(B=1, Hq=2, Hkv=1, Nq=7, Nk=9), dict(B=1, Hq=2, Hkv=1, Nq=140, Nk=130))
    q, k, v, params, layout = _inputs(spec, seed=1, **shape)
    extra = {"dropout_p": 0.25, "seed": 99} if spec.dropout else {}
    gen = torch.Generator().manual_seed(2)
    weights = torch.randn(q.shape[:3] + (v.shape[-1],), generator=gen, dtype=torch.float64)
    float_params = [n for n, p in params.items()
                    if isinstance(p, torch.Tensor) and p.is_floating_point()]
    leaves = {"q": q, "k": k, "v": v, **{n: params[n].double() for n in float_params}}
    leaves = {n: t.clone().requires_grad_(True) for n, t in leaves.items()}

    def loss_ref(ls):
        p = dict(params, **{n: ls[n] for n in float_params})
        out = op.reference(ls["q"], ls["k"], ls["v"], layout=layout, **extra, **p)
        return (out * weights).sum()

    loss_ref(leaves).backward()
    small = spec.block_sparse is None
    for name_, leaf in leaves.items():
        u = torch.randn(leaf.shape, generator=gen, dtype=torch.float64)
        want = (leaf.grad * u).sum()

        def f(x):
            ls = {n: t.detach() for n, t in leaves.items()}
            ls[name_] = x
            if small:   # the element-by-element oracle is slow: use it where it is affordable
                p = dict(params, **{n: ls[n] for n in float_params})
                out, _ = _naive_tensors(spec, ls["q"], ls["k"], ls["v"], p, layout, **extra)
                return (out * weights).sum()
            return loss_ref(ls)
        got = _directional_fd(f, leaf.detach(), u)
        assert torch.isfinite(leaf.grad).all()
        assert math.isclose(float(got), float(want), rel_tol=1e-5, abs_tol=1e-7), name_


def test_fully_masked_rows_give_zero_and_minus_inf_with_finite_gradients():
    op = flashgen.compile("attention a { head_dim = 16\n param n: i32[B]\n mask = key_padding(n) && q_idx < 5 }")
    q, k, v = (torch.randn(2, 2, 8, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    lengths = torch.tensor([0, 3], dtype=torch.int32)          # batch 0: no key at all
    out, lse = op.reference(q, k, v, return_lse=True, n=lengths)
    assert (out[0] == 0).all() and (lse[0] == -math.inf).all()
    assert (out[1, :, 5:] == 0).all() and (lse[1, :, 5:] == -math.inf).all()
    assert torch.isfinite(lse[1, :, :5]).all()
    (out.sum() + lse[torch.isfinite(lse)].sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0] == 0).all() and (k.grad[0] == 0).all()


def test_gqa_reads_kv_head_h_div_group():
    op = flashgen.compile("causal")
    q = torch.randn(1, 8, 10, 64, dtype=torch.float64)
    k = torch.randn(1, 2, 10, 64, dtype=torch.float64)
    v = torch.randn(1, 2, 10, 64, dtype=torch.float64)
    out = op.reference(q, k, v)
    for h in range(8):
        one = op.reference(q[:, h:h + 1], k[:, h // 4:h // 4 + 1], v[:, h // 4:h // 4 + 1])
        torch.testing.assert_close(out[:, h:h + 1], one)


def test_matches_torch_sdpa():
    op = flashgen.compile("causal")
    q, k, v = (torch.randn(2, 4, 37, 64, dtype=torch.float64) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(op.reference(q, k, v), want)


def test_bottom_right_causal_when_q_shorter():
    op = flashgen.compile("causal_bottom_right")
    q = torch.randn(1, 1, 3, 64, dtype=torch.float64)
    k = torch.randn(1, 1, 8, 64, dtype=torch.float64)
    v = torch.randn(1, 1, 8, 64, dtype=torch.float64)
    full = op.reference(torch.cat([torch.randn(1, 1, 5, 64, dtype=torch.float64), q], 2), k, v)
    torch.testing.assert_close(op.reference(q, k, v), full[:, :, 5:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_reference_runs_in_its_dtype_and_is_close(dtype):
    op = flashgen.compile("alibi")
    q, k, v, params, _ = _inputs(op.spec, Nq=64, Nk=64)
    lowp = op.reference(q.to(dtype), k.to(dtype), v.to(dtype), **params)
    assert lowp.dtype == dtype
    exact = op.reference(q, k, v, **params)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5}[dtype]
    assert (lowp.double() - exact).abs().max() < tol


def test_dtype_argument_computes_in_float64():
    op = flashgen.compile("softcap")
    q, k, v, params, _ = _inputs(op.spec, dtype=torch.bfloat16)
    out = op.reference(q, k, v, dtype=torch.float64, **params)
    assert out.dtype == torch.float64


def test_scale_override_and_spec_scale():
    t5 = flashgen.compile("t5_bias")
    assert t5.spec.scale == 1.0
    op = flashgen.compile("dense")
    q, k, v = (torch.randn(1, 1, 5, 64, dtype=torch.float64) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(op.reference(q, k, v, scale=0.3), want)


def test_dropout_seed_semantics():
    op = flashgen.compile("dropout_causal")
    q, k, v = (torch.randn(1, 2, 20, 64, dtype=torch.float64) for _ in range(3))
    a = op.reference(q, k, v, dropout_p=0.5, seed=7)
    b = op.reference(q, k, v, dropout_p=0.5, seed=7)
    c = op.reference(q, k, v, dropout_p=0.5, seed=8)
    d = op.reference(q, k, v, dropout_p=0.5, seed=(7, 1))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    torch.manual_seed(0)
    e = op.reference(q, k, v, dropout_p=0.5)
    f = op.reference(q, k, v, dropout_p=0.5)
    torch.manual_seed(0)
    g = op.reference(q, k, v, dropout_p=0.5)
    assert torch.equal(e, g) and not torch.equal(e, f)
    torch.testing.assert_close(op.reference(q, k, v, dropout_p=0.0, seed=3), op.reference(q, k, v))
