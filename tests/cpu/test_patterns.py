"""Block-sparse patterns against their definitions, and block-sparse attention (with
small blocks, so that there are many) against the naive implementation."""
import pytest
import torch

import flashgen
from flashgen.reference.patterns import bigbird, butterfly, strided
from flashgen.reference.philox import philox4x32_10_scalar
from flashgen.runtime.examples import example_inputs

from . import naive


def test_butterfly_definition():
    layout = butterfly(16, 12)[0]
    for i in range(16):
        for j in range(12):
            x = i ^ j
            assert bool(layout[i, j]) == (x == 0 or bin(x).count("1") == 1)
    # density of the flat butterfly: (1 + log2 n) / n
    assert butterfly(64, 64).sum().item() == 64 * 7


def test_strided_definition():
    layout = strided(20, 20, 4)[0]
    for i in range(20):
        for j in range(20):
            assert bool(layout[i, j]) == (abs(i - j) < 4 or (i - j) % 4 == 0)


def test_bigbird_definition():
    layout = bigbird(12, 10, window=1, global_=2, random=3, seed=77)[0]
    for i in range(12):
        picked = {philox4x32_10_scalar((i, t, 0x42494742, 0), (77, 0))[0] % 10 for t in range(3)}
        for j in range(10):
            want = abs(i - j) <= 1 or i < 2 or j < 2 or j in picked
            assert bool(layout[i, j]) == want
    assert not torch.equal(bigbird(12, 10, 1, 2, 3, 77), bigbird(12, 10, 1, 2, 3, 78))


SMALL_BLOCK_SPECS = {
    "butterfly": "attention a { head_dim = 16\n mask = causal\n block_sparse = butterfly(block = 16) }",
    "bigbird": "attention a { head_dim = 16\n block_sparse = bigbird(block = 16, window = 1, global = 1, random = 1, seed = 3) }",
    "strided": "attention a { head_dim = 16\n block_sparse = strided(block_q = 16, block_k = 32, stride = 2) }",
    "layout": "attention a { head_dim = 16\n param s: f32[H]\n score = alibi(s)\n block_sparse = layout(block = 16) }",
}


@pytest.mark.parametrize("name", sorted(SMALL_BLOCK_SPECS))
def test_block_sparse_reference_matches_naive(name):
    op = flashgen.compile(SMALL_BLOCK_SPECS[name])
    gen = torch.Generator().manual_seed(0)
    q, k, v, params, layout = example_inputs(op.spec, B=1, Hq=2, Hkv=1, Nq=100, Nk=90,
                                             generator=gen)
    out, lse = op.reference(q, k, v, return_lse=True, layout=layout, **params)
    want_out, want_lse = naive.attention(op.spec, q, k, v, layout=layout, **params)
    torch.testing.assert_close(out, torch.tensor(want_out, dtype=torch.float64))
    torch.testing.assert_close(lse, torch.tensor(want_lse, dtype=torch.float64))
    if layout is None:   # a fixed pattern with many blocks has zero blocks to skip
        from flashgen.reference.patterns import fixed_layout
        assert not fixed_layout(op.spec.block_sparse, 100, 90).all()


def test_layout_per_head_and_broadcast():
    op = flashgen.compile(SMALL_BLOCK_SPECS["layout"])
    q, k, v = (torch.randn(1, 2, 40, 16, dtype=torch.float64) for _ in range(3))
    s = torch.rand(2)
    one = torch.rand(1, 3, 3) < 0.6
    torch.testing.assert_close(op.reference(q, k, v, s=s, layout=one),
                               op.reference(q, k, v, s=s, layout=one.expand(2, 3, 3).clone()))
