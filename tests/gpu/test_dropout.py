"""The kernels' dropout: exactly the reference's Philox mask, forward and backward, and
statistically sound. The mask is read off the kernels' results: with q = k = 0 every
visible key gets P = 1 / Nk, so
  forward:  V = identity (Nk = dv = 64)  ->  O[q, c]  = keep[q, c] / (Nk (1 - p))
  backward: dO = identity (Nq = dv = 64) -> dV[kv, c] = keep[c, kv] / (Nk (1 - p))
which reveals the mask of 64 keys x any number of queries (forward) and 64 queries x
any number of keys (backward, the mask drawn a second time)."""
import math

import pytest
import torch

import flashgen
from flashgen.reference.philox import keep_mask, resolve_seed

pytestmark = pytest.mark.gpu

SPEC = "attention dropout_dense { head_dim = 64  dropout }"


def forward_mask(op, B, H, Nq, p, seed):
    q = torch.zeros(B, H, Nq, 64, device="cuda", dtype=torch.float16)
    v = torch.eye(64, device="cuda", dtype=torch.float16).expand(B, H, 64, 64)
    out = op(q, q[:, :, :64], v, dropout_p=p, seed=seed)
    return out > 0


def backward_mask(op, B, H, Nk, p, seed):
    q = torch.zeros(B, H, 64, 64, device="cuda", dtype=torch.float16)
    k = torch.zeros(B, H, Nk, 64, device="cuda", dtype=torch.float16)
    v = torch.zeros(B, H, Nk, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    dout = torch.eye(64, device="cuda", dtype=torch.float16).expand(B, H, 64, 64)
    op(q, k, v, dropout_p=p, seed=seed).backward(dout)
    return (v.grad > 0).transpose(-1, -2)     # [B, H, 64 queries, Nk]


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_forward_and_backward_draw_the_reference_mask_bit_for_bit(p):
    op = flashgen.compile(SPEC)
    seed = (0x1234_5678_9ABC_DEF0, 77)
    got = forward_mask(op, 2, 3, 3000, p, seed)
    want = keep_mask(*resolve_seed(seed, "cuda"), p, 2, 3, 3000, 64, device="cuda")
    assert torch.equal(got, want)
    got = backward_mask(op, 2, 3, 5000, p, seed)
    want = keep_mask(*resolve_seed(seed, "cuda"), p, 2, 3, 64, 5000, device="cuda")
    assert torch.equal(got, want)


def _within(fraction, expected, n, sigmas=4.0):
    return abs(fraction - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_kept_fraction_and_independence(p):
    op = flashgen.compile(SPEC)
    keep = forward_mask(op, 2, 4, 65536, p, seed=3)          # 33.5 M draws
    n = keep.numel()
    fraction = keep.float().mean().item()
    assert _within(fraction, 1 - p, n), f"kept {fraction:.6f}, expected {1 - p} over {n}"
    # two independent masks agree with probability p^2 + (1 - p)^2
    agree = p * p + (1 - p) ** 2
    other_seed = forward_mask(op, 2, 4, 65536, p, seed=4)
    pairs = {"seeds": (keep, other_seed), "batches": (keep[0], keep[1]),
             "heads": (keep[:, 0], keep[:, 1]), "rows r, r+8": (keep[..., 0:8, :], keep[..., 8:16, :]),
             "columns c, c+1": (keep[..., 0::2], keep[..., 1::2])}
    for what, (a, b) in pairs.items():
        same = (a == b).float().mean().item()
        assert _within(same, agree, a.numel()), f"{what}: agree {same:.6f}, expected {agree:.6f}"


def test_seed_none_follows_torch_manual_seed():
    op = flashgen.compile(SPEC)
    torch.manual_seed(11)
    a = forward_mask(op, 1, 2, 256, 0.3, None)
    b = forward_mask(op, 1, 2, 256, 0.3, None)
    torch.manual_seed(11)
    c = forward_mask(op, 1, 2, 256, 0.3, None)
    assert torch.equal(a, c) and not torch.equal(a, b)
    # the reference draws the same seed and offset from the generator
    torch.manual_seed(11)
    q = torch.zeros(1, 2, 256, 64, device="cuda", dtype=torch.float64)
    v = torch.eye(64, device="cuda", dtype=torch.float64).expand(1, 2, 64, 64)
    ref = op.reference(q, q[:, :, :64], v, dropout_p=0.3)
    assert torch.equal(ref > 0, a)


def test_zero_p_is_no_dropout():
    op = flashgen.compile(SPEC)
    q, k, v = (torch.randn(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    assert torch.equal(op(q, k, v, dropout_p=0.0), op(q, k, v))
