"""The torch.library ops' plumbing on the CPU, with the kernel launches replaced by
stand-ins: argument order, the rng state handed from forward to backward, autograd's
structure for every kind of call (with and without seed, scalars, layout)."""
import torch

import flashgen
from flashgen.runtime import launch
from flashgen.runtime.op import attention, forward_op


def test_forward_and_backward_ops_pass_their_arguments(monkeypatch):
    seen = {}

    def fake_forward(key, q, k, v, tensors, scalars, scale, dropout_p, rng, layout, saved,
                     splits, varlen=None):
        seen["forward"] = (dropout_p, rng.tolist(), layout)
        B, H, Nq, _ = q.shape
        return q * 1.0, torch.zeros(B, H, Nq), q.detach().float().clone() if saved else torch.zeros(0)

    def fake_backward(key, dout, q, k, v, out, lse, dlse, tensors, scalars, scale, wanted,
                      deterministic, dropout_p, rng, layout, varlen=None):
        seen["backward"] = (dropout_p, rng.tolist(), layout, deterministic)
        seen["backward out"] = out
        seen["dlse"], seen["dout"] = dlse, dout
        return dout * 1.0, torch.zeros_like(k), torch.zeros_like(v), torch.zeros(0)

    monkeypatch.setattr(launch, "forward", fake_forward)
    monkeypatch.setattr(launch, "backward", fake_backward)
    layouts = (("dropout_causal", None), ("block_layout", torch.ones(1, 1, 1, dtype=torch.bool)))
    # the custom op (torch.compile's path) and the eager autograd.Function
    for (spec, layout), op in [(s, o) for s in layouts for o in (forward_op, attention)]:
        key = flashgen.compile(spec).key
        for seed in ([], [5, 6, 7]):
            q, k, v = (torch.randn(1, 2, 8, 64, requires_grad=True) for _ in range(3))
            p = 0.25 if spec == "dropout_causal" else 0.0
            out, lse, rng, out_f32 = op(key, q, k, v, [], [], 0.125, p, seed, layout, True,
                                        launch.SAVE_F32_OUT, 1, [], [])
            out.sum().backward()
            assert seen["backward out"] is not out and torch.equal(seen["backward out"], out_f32)
            assert seen["forward"][:2] == seen["backward"][:2] == (p, rng.tolist())
            assert seen["backward"][3] is True
            if seed:
                assert rng.tolist() == seed
            assert torch.equal(q.grad, torch.ones_like(q))
            # outputs the loss leaves out come as None (no fill of their size), except that
            # a loss of lse alone still gets a dO, of zeros
            assert seen["dlse"] is None
            lse2 = op(key, q, k, v, [], [], 0.125, p, seed, layout, True,
                      launch.SAVE_F32_OUT, 1, [], [])[1]
            lse2.sum().backward()
            assert seen["dlse"] is not None and torch.equal(seen["dout"], torch.zeros_like(out))


def test_forward_keeps_for_backward_only_what_autograd_needs():
    """Inference keeps nothing, nor do dq/dk/dv (delta from O in the input dtype) but
    under dropout, which wants O in fp32; a float table's gradient also wants P V with P
    unrounded (launch.SAVE_*, PERF.md steps 11 and 24)."""
    from flashgen.api import _saved_for_backward
    q, k, v = (torch.randn(1, 2, 8, 64) for _ in range(3))
    slopes = torch.rand(2)
    assert _saved_for_backward(q, k, v, [slopes]) == launch.SAVE_NOTHING
    q.requires_grad_()
    assert _saved_for_backward(q, k, v, [slopes]) == launch.SAVE_NOTHING
    assert _saved_for_backward(q, k, v, [slopes], dropout_p=0.1) == launch.SAVE_F32_OUT
    with torch.no_grad():
        assert _saved_for_backward(q, k, v, [slopes]) == launch.SAVE_NOTHING
    slopes.requires_grad_()
    assert _saved_for_backward(q.detach(), k, v, [slopes]) == launch.SAVE_EXACT_F32_OUT


def test_split_kv_count_by_shape(monkeypatch):
    """launch.kv_splits: one CTA per Q tile while they fill half the GPU or more; for
    decoding shapes one wave of CTAs, >= 4 K/V tiles per split, at most 64; a forced count
    is capped by the K/V tiles."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: 132)
    monkeypatch.setattr(launch, "_arch", lambda index: "sm_90a")
    key = flashgen.compile("causal_bottom_right").key
    block_n = launch.variant(key).plan(128, "sm_90a").forward.general_keys  # split-KV's tiles
    q = torch.empty(1, 8, 1, 128, device="meta")
    k = torch.empty(1, 8, 32768, 128, device="meta")
    assert launch.kv_splits(key, q, k) == min(132 // 8, 32768 // block_n // 4, 64)
    assert launch.kv_splits(key, torch.empty(4, 16, 1, 128, device="meta"), k) == 2  # 64 CTAs
    assert launch.kv_splits(key, torch.empty(5, 16, 1, 128, device="meta"), k) == 1  # 80
    assert launch.kv_splits(key, torch.empty(8, 16, 1, 128, device="meta"), k) == 1  # 128
    assert launch.kv_splits(key, torch.empty(8, 32, 1, 128, device="meta"), k) == 1  # 256
    assert launch.kv_splits(key, torch.empty(2, 16, 4096, 128, device="meta"), k) == 1
    assert launch.kv_splits(key, q, torch.empty(1, 8, 4 * block_n, 128, device="meta")) == 1
    assert launch.kv_splits(key, q, k, splits=1000) == launch.MAX_KV_SPLITS
    assert launch.kv_splits(key, q, k[:, :, :3 * block_n], splits=1000) == 3
    assert launch.kv_splits(key, q, k, splits=3) == 3


def test_inference_skips_the_autograd_function(monkeypatch):
    """Without a tensor that wants a gradient (or under no_grad) the eager path calls the
    kernels directly: the same launch.forward arguments, no autograd node."""
    calls = []

    def fake_forward(key, q, k, v, tensors, scalars, scale, dropout_p, rng, layout, saved,
                     splits, varlen=None):
        calls.append((key, scale, dropout_p, rng.tolist(), layout, saved, splits))
        B, H, Nq, _ = q.shape
        return q * 1.0, torch.zeros(B, H, Nq), torch.zeros(0)

    def no_function(*args):
        raise AssertionError("the autograd Function ran for an inference call")

    monkeypatch.setattr(launch, "forward", fake_forward)
    key = flashgen.compile("dropout_causal").key
    q, k, v = (torch.randn(1, 2, 8, 64) for _ in range(3))
    args = (key, q, k, v, [], [], 0.125, 0.25, [5, 6, 7], None, False, launch.SAVE_NOTHING, 1)
    from flashgen.runtime import op as op_module
    monkeypatch.setattr(op_module._EagerAttention, "apply", no_function)
    out, lse, rng, _ = attention(*args)
    assert out.grad_fn is None and rng.tolist() == [5, 6, 7]
    with torch.no_grad():
        attention(key, q.requires_grad_(), k, v, *args[4:])
    assert calls[0] == calls[1] == (key, 0.125, 0.25, [5, 6, 7], None, launch.SAVE_NOTHING, 1)
    monkeypatch.undo()
    monkeypatch.setattr(launch, "forward", fake_forward)
    out, *_ = attention(key, q, k, v, *args[4:])      # q wants a gradient: the Function
    assert out.grad_fn is not None


def test_forward_mode_ad_is_refused_not_dropped(monkeypatch):
    """Dual tensors do not set requires_grad; the inference path must not take them (it
    would drop the tangent): the Function runs and refuses, as it has no jvp."""
    import pytest
    import torch.autograd.forward_ad as fwAD

    def fake_forward(key, q, k, v, tensors, scalars, scale, dropout_p, rng, layout, saved,
                     splits, varlen=None):
        B, H, Nq, _ = q.shape
        return q * 1.0, torch.zeros(B, H, Nq), torch.zeros(0)

    monkeypatch.setattr(launch, "forward", fake_forward)
    key = flashgen.compile("causal").key
    q, k, v = (torch.randn(1, 2, 8, 64) for _ in range(3))
    with fwAD.dual_level():
        dual = fwAD.make_dual(q, torch.ones_like(q))
        with pytest.raises(Exception):
            attention(key, dual, k, v, [], [], 0.125, 0.0, [], None, False,
                      launch.SAVE_NOTHING, 1)


def test_an_affine_bias_runs_a_negative_scale_as_minus_q(monkeypatch):
    """kernels/softmax.cuh: an affine bias's forward takes a positive scale only, so the
    host passes -Q and -scale (exact); other specs get q and scale as they are."""
    seen = []
    monkeypatch.setattr(launch, "_library", lambda *args: None)
    monkeypatch.setattr(launch, "_call", lambda lib, fn, ints, floats, device:
                        seen.append(floats[0]))
    captured = {}
    real_as_kernel_sees = launch._as_kernel_sees

    def as_kernel_sees(n, *tensors, outputs=False):
        if not outputs:
            captured["q"] = tensors[0]
        return real_as_kernel_sees(n, *tensors, outputs=outputs)
    monkeypatch.setattr(launch, "_as_kernel_sees", as_kernel_sees)
    q, k, v = (torch.randn(1, 2, 8, 64) for _ in range(3))
    for spec, tensors, flipped in (("alibi", [torch.rand(2)], True), ("causal", [], False)):
        launch.forward(flashgen.compile(spec).key, q, k, v, tensors, [], -0.125)
        assert seen[-1] == (0.125 if flipped else -0.125)
        assert torch.equal(captured["q"], -q if flipped else q)
        launch.forward(flashgen.compile(spec).key, q, k, v, tensors, [], 0.125)
        assert seen[-1] == 0.125 and torch.equal(captured["q"], q)
