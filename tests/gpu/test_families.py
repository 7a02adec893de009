"""The two kernel families against each other on Hopper: the sm90 family (warpgroup
MMA, templates/kernels/forward_sm90.cuh and backward_sm90.cuh) and the mma.sync family
(forward.cuh, backward.cuh), compiled from one spec, run on the same inputs. Each must be within the
oracle's bound of the float64 reference, and the two within the sum of their bounds of
each other (they add in different orders). Dropout draws the same keep mask in both
(the Philox counter is the element's index), so dropout cases compare too. The
backward passes are judged by the oracle's `compare` (gradients of q, k, v and float
tables), deterministic mode included."""
import zlib

import pytest
import torch

import flashgen
from flashgen.runtime import launch
from flashgen.runtime.examples import example_inputs

from .oracle import DTYPES, bound, compare, error

pytestmark = pytest.mark.gpu

# spec, dtype, head dim, B, H, Hkv, Nq, Nk, call options
CASES = [
    ("dense", "bf16", 128, 2, 4, 4, 1000, 1000, {}),
    ("causal", "fp16", 64, 2, 4, 2, 777, 777, {}),
    ("causal", "bf16", 256, 1, 2, 1, 300, 300, {}),
    ("softcap", "fp16", 256, 1, 2, 2, 1030, 1030, {}),  # 17 tiles of 64 keys: many stage rounds
    ("alibi", "bf16", 128, 2, 4, 4, 500, 700, {}),
    ("softcap", "fp16", 128, 1, 4, 4, 640, 640, {}),
    ("sliding_window", "bf16", 64, 1, 4, 4, 2000, 2000, {}),
    ("document", "bf16", 128, 2, 4, 4, 600, 600, {}),
    ("bigbird", "bf16", 64, 1, 4, 2, 900, 1100, {}),
    ("dropout_causal", "bf16", 128, 1, 4, 2, 513, 513, {"dropout_p": 0.3}),
    # a runtime kv length; at these lengths (576, 1075 of 1500) the 8-tile spans
    # (schedule.cuh) are skipped by the mma forward (BN = 64) and the backward only
    ("key_padding", "bf16", 128, 2, 4, 4, 1000, 1500, {}),
    # more units than an H100 / H200 has SMs (132): a persistent CTA runs several, each
    # loading the next one's Q rows under its tail (GQA; runtime kv lengths)
    ("dense", "bf16", 128, 4, 16, 4, 1100, 1100, {}),
    ("key_padding", "bf16", 128, 4, 16, 16, 700, 1500, {}),
]



def _hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def _families(name, d, which):
    """The spec's op on each family, checked to plan `which` pass ("forward" or "backward")
    on the family asked for."""
    sm90, mma = flashgen.compile(name), flashgen.compile(name, family="mma")
    arch = launch._arch(torch.cuda.current_device())
    assert getattr(launch.variant(sm90.key).plan(d, arch), which).family == "wgmma"
    assert getattr(launch.variant(mma.key).plan(d, arch), which).family == "mma"
    return sm90, mma


@pytest.mark.skipif(not _hopper(), reason="the sm90 family needs an sm_90 GPU")
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-d{c[2]}")
def test_families_agree(case, monkeypatch):
    monkeypatch.setenv("FLASHGEN_POISON", "1")
    name, dtype, d, B, H, Hkv, Nq, Nk, options = case
    sm90, mma = _families(name, d, "forward")

    gen = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))
    q, k, v, params, layout = example_inputs(sm90.spec, B, H, Hkv, Nq, Nk, head_dim=d,
                                             dtype=torch.float64, device="cuda", generator=gen)
    call = dict(options, **({} if layout is None else {"layout": layout}))
    if "dropout_p" in call:
        call["seed"] = (11, 12)
    dt = DTYPES[dtype]
    q, k, v = (t.to(dt) for t in (q, k, v))
    floats = [n for n, t in params.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    params = {n: t.float() if n in floats else t for n, t in params.items()}
    params64 = {n: t.double() if n in floats else t for n, t in params.items()}
    with torch.no_grad():
        ref = sm90.reference(q.double(), k.double(), v.double(), return_lse=True,
                             dtype=torch.float64, **call, **params64)
        low = sm90.reference(q, k, v, return_lse=True, dtype=dt, **call, **params)
        ops = [("sm90", sm90), ("mma", mma)]
        # the warp-specialised forward (forward_sm90_ws.cuh; the default), persistent, and
        # at d = 256 the two-warpgroup CTA (forward_sm90.cuh) that was its default there
        ops += [(f, flashgen.compile(name, family=f))
                for f in ("wgmma_ws", "wgmma_ws_persistent") + (("wgmma",) if d == 256 else ())]
        got = {f: op(q, k, v, return_lse=True, **call, **params) for f, op in ops}
    for i, what in enumerate(("out", "lse")):
        limit = bound(low[i], ref[i])
        for family, result in got.items():
            assert not torch.isnan(result[i]).any(), f"{family} {what}: NaN"
            err = error(result[i], ref[i])
            assert err <= limit, f"{family} {what}: error {err:.3g} > bound {limit:.3g}"
        for family in got:
            between = error(got[family][i], got["mma"][i].double())
            assert between <= 2 * limit, \
                f"{what}: {family} and mma differ by {between:.3g} > {2 * limit:.3g}"


# spec, dtype, head dim, B, H, Hkv, Nq, Nk, compare options: the backward's cases (at
# d = 256 the sm90 backward splits the head dim between its consumers,
# backward_sm90_split.cuh; a packed batch there runs the mma.sync backward in both)
BACKWARD_CASES = [
    ("causal", "bf16", 256, 2, 4, 2, 1000, 1000, {}),
    ("softcap", "fp16", 256, 1, 2, 2, 1030, 1030, {}),
    ("dense", "bf16", 256, 1, 4, 4, 600, 600, {"deterministic": True}),
    ("causal", "fp16", 256, 2, 2, 2, 257, 700, {"lengths": ([257, 100], [700, 300])}),
    ("dense", "bf16", 128, 2, 4, 4, 1000, 1000, {}),
    ("causal", "fp16", 64, 2, 4, 2, 777, 777, {}),
    ("causal", "bf16", 128, 1, 4, 4, 640, 640, {"deterministic": True}),
    ("alibi", "bf16", 128, 2, 4, 4, 500, 700, {}),
    ("softcap", "fp16", 128, 1, 4, 4, 640, 640, {}),
    ("sliding_window", "bf16", 64, 1, 4, 4, 2000, 2000, {}),
    ("document", "bf16", 128, 2, 4, 4, 600, 600, {}),
    ("bigbird", "bf16", 64, 1, 4, 2, 900, 1100, {}),
    ("temperature", "bf16", 64, 2, 4, 2, 300, 333, {}),
    ("dropout_causal", "bf16", 128, 1, 4, 2, 513, 513, {"dropout_p": 0.3}),
    ("prefix_lm", "fp16", 128, 2, 4, 4, 257, 1025, {"lengths": ([257, 100], [1025, 300])}),
]


@pytest.mark.skipif(not _hopper(), reason="the sm90 family needs an sm_90 GPU")
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=lambda c: f"{c[0]}-{c[1]}-d{c[2]}")
def test_backward_families(case, monkeypatch):
    sm90, mma = _families(case[0], case[2], "backward")
    _through_oracle(case, {"sm90": sm90, "mma": mma}, monkeypatch)


def _through_oracle(case, ops, monkeypatch):
    """Each op's forward and backward on the case's inputs, judged by the oracle."""
    monkeypatch.setenv("FLASHGEN_POISON", "1")
    name, dtype, d, B, H, Hkv, Nq, Nk, options = case
    seed = zlib.crc32(repr(case).encode())
    for family, op in ops.items():
        row = compare(op, dtype, d, B, H, Hkv, Nq, Nk, seed, f"{name} {family}", **options)
        assert not row["failures"], f"{family}: {row}"


# The persistent forward with several units per CTA (more units than an H100's / H200's
# 132 SMs), through the oracle with its backward: units drawn from the tickets, each
# unit's last P V carried into the next unit's first step, two Q slots (d <= 128) or one
# (d = 256), dropout's per-unit streams, a runtime kv length (units of different tile
# counts), and a packed batch, whose general instance runs the grid instead.
PERSISTENT_CASES = [
    ("causal", "bf16", 128, 4, 16, 8, 1025, 1025, {}),
    ("dropout_causal", "bf16", 128, 2, 16, 16, 700, 700, {"dropout_p": 0.2}),
    ("key_padding", "fp16", 64, 4, 16, 16, 700, 1500, {}),
    ("causal", "fp16", 256, 2, 8, 8, 1000, 1000, {}),
    ("causal", "fp16", 64, 2, 16, 16, 1025, 1025, {"lengths": ([1025, 300], [1025, 300])}),
]


@pytest.mark.skipif(not _hopper(), reason="the sm90 family needs an sm_90 GPU")
@pytest.mark.parametrize("case", PERSISTENT_CASES, ids=lambda c: f"{c[0]}-{c[1]}-d{c[2]}")
def test_persistent_units(case, monkeypatch):
    op = flashgen.compile(case[0], family="wgmma_ws_persistent")
    arch = launch._arch(torch.cuda.current_device())
    assert launch.variant(op.key).plan(case[2], arch).forward.persistent
    _through_oracle(case, {"persistent": op}, monkeypatch)
