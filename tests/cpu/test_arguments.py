"""A bad call gets a plain ArgumentError naming the argument, before anything runs."""
import pytest
import torch

import flashgen
from flashgen import ArgumentError


def qkv(B=1, Hq=2, Hkv=1, Nq=8, Nk=8, d=64, dv=None, dtype=torch.float32):
    return (torch.randn(B, Hq, Nq, d, dtype=dtype), torch.randn(B, Hkv, Nk, d, dtype=dtype),
            torch.randn(B, Hkv, Nk, dv or d, dtype=dtype))


CASES = [
    ("causal", dict(), lambda q, k, v: (q[0], k, v), {}, "q must be 4-D"),
    ("causal", dict(), lambda q, k, v: (q, k.double(), v), {}, "one dtype"),
    ("causal", dict(Hq=3, Hkv=2), None, {}, "multiple of k/v's heads"),
    ("alibi", dict(d=32), None, {"slopes": torch.ones(4)}, "head dim 32 is not one of the spec's (64, 128)"),
    ("causal", dict(dv=32), None, {}, "v's head dim is 32"),
    ("causal", dict(), lambda q, k, v: (q, k[:, :, :5], v), {}, "same sequence length"),
    ("causal", dict(), lambda q, k, v: (q, k, torch.cat([v, v])), {}, "batch sizes differ"),
    ("alibi", dict(), None, {}, "missing parameter 'slopes'"),
    ("alibi", dict(), None, {"slopes": torch.ones(3)}, "has size 3 in dim 0 (H); expected 2"),
    ("alibi", dict(), None, {"slopes": torch.ones(2, dtype=torch.int32)}, "must hold f32"),
    ("alibi", dict(), None, {"slopes": 1.0}, "must be a tensor [H]"),
    ("alibi", dict(), None, {"slopes": torch.ones(2), "slope": 1}, "no parameter 'slope'; did you mean 'slopes'"),
    ("sliding_window", dict(), None, {"window": 2.5}, "must be a 32-bit int"),
    ("document", dict(Nk=9), None, {"doc": torch.zeros(1, 8, dtype=torch.int32)}, "uses N"),
    ("causal", dict(), None, {"dropout_p": 0.1}, "has no dropout"),
    ("dropout_causal", dict(), None, {"dropout_p": 1.0}, "dropout_p must be in [0, 1)"),
    ("dropout_causal", dict(), None, {"dropout_p": -0.1}, "dropout_p must be in [0, 1)"),
    ("dropout_causal", dict(), None, {"dropout_p": 0.1, "seed": 1.5}, "seed must be None"),
    ("dropout_causal", dict(), None, {"dropout_p": 0.1, "seed": (1, 2, 3)}, "(seed, offset) pair"),
    ("block_layout", dict(), None, {}, "needs a block layout"),
    ("block_layout", dict(), None, {"layout": torch.ones(1, 2, 2, dtype=torch.bool)}, "layout must have shape [2 or 1, 1, 1]"),
    ("block_layout", dict(), None, {"layout": torch.ones(1, 1, 1)}, "bool tensor"),
    ("causal", dict(), None, {"layout": torch.ones(1, 1, 1, dtype=torch.bool)}, "takes no layout"),
    ("causal", dict(), None, {"scale": float("nan")}, "scale must be a finite number"),
]


@pytest.mark.parametrize("name,shape,edit,kwargs,message", CASES, ids=[c[4][:30] for c in CASES])
def test_reference_rejects_bad_arguments(name, shape, edit, kwargs, message):
    op = flashgen.compile(name)
    q, k, v = qkv(**shape)
    if edit:
        q, k, v = edit(q, k, v)
    kwargs = dict(kwargs)
    with pytest.raises(ArgumentError) as info:
        op.reference(q, k, v, **kwargs)
    assert message in str(info.value)


def test_kernel_call_checks_device_and_dtype_before_anything():
    op = flashgen.compile("causal")
    with pytest.raises(ArgumentError, match="built for fp16, bf16"):
        op(*qkv(dtype=torch.float32))
    with pytest.raises(ArgumentError, match="needs CUDA tensors"):
        op(*qkv(dtype=torch.bfloat16))


def test_kernel_call_refuses_more_batch_x_heads_than_the_grid_holds():
    from flashgen.runtime.arguments import bind
    spec = flashgen.load("causal")
    q = torch.empty(1024, 128, 1, 64, dtype=torch.bfloat16, device="meta")
    with pytest.raises(ArgumentError, match="batch x heads is 1024 x 128 = 131072; .* at most 65535"):
        bind(spec, q, q, q, for_kernel=True)


def test_empty_calls_launch_nothing():
    """No rows, or rows with no key: zeros (lse -inf, as a fully masked row) and zero
    gradients, without a kernel launch (so on any device)."""
    from flashgen.runtime import launch
    op = flashgen.compile("causal")
    q = torch.randn(2, 4, 5, 64, dtype=torch.bfloat16)
    no_keys = torch.empty(2, 4, 0, 64, dtype=torch.bfloat16)
    out, lse, out_f32 = launch.forward(op.key, q, no_keys, no_keys, [], [], 0.125,
                                       saved=launch.SAVE_F32_OUT)
    assert torch.equal(out, torch.zeros_like(q)) and torch.isneginf(lse).all()
    assert torch.equal(out_f32, torch.zeros(2, 4, 5, 64))
    none = torch.empty(0, 4, 5, 64, dtype=torch.bfloat16)
    out, lse, _ = launch.forward(op.key, none, none, none, [], [], 0.125)
    assert out.shape == (0, 4, 5, 64) and lse.shape == (0, 4, 5)
    dq, dk, dv, flat = launch.backward(op.key, q, q, no_keys, no_keys, q, lse, None, [], [],
                                       0.125, [])
    assert torch.equal(dq, torch.zeros_like(q)) and dk.shape == (2, 4, 0, 64) and flat.numel() == 0


def test_free_symbols_bind_consistently():
    op = flashgen.compile("attention a { head_dim = 64\n param t: f32[H, K]\n param u: f32[K]\n"
                          " score = score + t[h, 0] + u[0] }")
    q, k, v = qkv()
    op.reference(q, k, v, t=torch.zeros(2, 5), u=torch.zeros(5))
    with pytest.raises(ArgumentError, match=r"size 4 in dim 0 \(K\); expected 5"):
        op.reference(q, k, v, t=torch.zeros(2, 5), u=torch.zeros(4))


def test_tensor_reads_clamp_out_of_range_indices():
    op = flashgen.compile("attention a { head_dim = 64\n param t: f32[4]\n score = score + t[kv_idx - 2] }")
    q, k, v = qkv(Nk=8, dtype=torch.float64)
    t = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    got = op.reference(q, k, v, t=t)
    bias = t[(torch.arange(8) - 2).clamp(0, 3)]
    s = (q @ k.transpose(-1, -2)) / 8 + bias
    torch.testing.assert_close(got, torch.softmax(s, -1) @ v)
