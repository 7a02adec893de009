"""A paged KV cache (op.paged, forward only) against its reference (op.reference_paged):
shuffled pages, entries of their own lengths (one shorter than a page, one ending inside
a page), GQA, split-KV by shape and forced, a score, a block pattern, pages from 5 to 256
rows; out and lse within the oracle's bound."""
import pytest
import torch

import flashgen

from .oracle import DTYPES, bound, error

pytestmark = pytest.mark.gpu

CASES = [
    # spec, dtype, d, H, Hkv, Nq, kv lengths, page size, call options
    ("causal_bottom_right", "bf16", 128, 8, 2, 1, [1000, 5, 300], 128, {}),
    # 256-row pages at d = 128, whose padded-batch tiles are 160 keys: the general
    # instance's 128-key tiles nest in them (ForwardPlan.general_keys)
    ("dense", "bf16", 128, 4, 2, 64, [1000, 2600], 256, {}),
    # vLLM's 16-row pages: a 128-key tile across up to 9 pages (PageWindow's shuffles);
    # 5-row pages: more than a warp's 32 lanes of pages a tile, each row finds its own
    ("causal_bottom_right", "bf16", 128, 4, 2, 16, [700, 33, 2001], 16, {}),
    ("dense", "fp16", 128, 2, 2, 8, [300, 161], 5, {}),
    ("causal_bottom_right", "fp16", 64, 4, 4, 16, [4096, 17, 2000, 640], 256, {"kv_splits": 5}),
    ("alibi", "bf16", 128, 4, 2, 3, [129, 700], 64, {}),
    ("dense", "bf16", 64, 4, 1, 1, [8192, 1, 3000], 128, {}),
    ("bigbird", "bf16", 64, 2, 2, 128, [1500, 900], 128, {}),
    # decoding's one consumer loads a tile across pages in warp bands (schedule.cuh
    # PageBand): pages of 16 at d = 64, of 24 (a band across three), of 8 at d = 256
    ("dense", "bf16", 64, 4, 2, 1, [3000, 40, 515], 16, {}),
    ("causal_bottom_right", "fp16", 128, 2, 2, 5, [1111, 24, 700], 24, {}),
    ("dense", "bf16", 256, 2, 1, 4, [900, 77], 8, {}),
    # prefill (more than 64 query rows) in bands too with two consumers (forward_sm90_ws.cuh
    # kPageBands): pages of 16 and 24 at d = 128, 8 at d = 256; three consumers (d = 64)
    # take PageWindow's shuffles
    ("causal_bottom_right", "bf16", 128, 4, 2, 300, [700, 300, 2001], 16, {}),
    ("causal", "bf16", 64, 4, 4, 200, [513, 2000], 16, {}),
    ("dense", "fp16", 128, 2, 2, 129, [1111, 700], 24, {}),
    ("dense", "fp16", 256, 2, 1, 130, [900, 177], 8, {}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-d{c[2]}-p{c[7]}")
def test_paged_cache_matches_reference(case, monkeypatch):
    monkeypatch.setenv("FLASHGEN_POISON", "1")
    spec, dtype, d, H, Hkv, Nq, lens, ps, options = case
    op = flashgen.compile(spec)
    gen = torch.Generator().manual_seed(sum(lens))
    per = [-(-n // ps) for n in lens]
    pool = sum(per) + 5
    order = torch.randperm(pool, generator=gen)
    table = torch.zeros(len(lens), max(per), dtype=torch.int32)
    at = 0
    for b, n in enumerate(per):
        table[b, :n] = order[at:at + n]
        at += n
    dt = DTYPES[dtype]
    q = torch.randn(len(lens), H, Nq, d, generator=gen, dtype=torch.float64).to(dt).cuda()
    k = torch.randn(pool, ps, Hkv, d, generator=gen, dtype=torch.float64).to(dt).cuda()
    v = torch.randn(pool, ps, Hkv, d, generator=gen, dtype=torch.float64).to(dt).cuda()
    table, kv_lens = table.cuda(), torch.tensor(lens, dtype=torch.int32).cuda()
    params = {}
    if spec == "alibi":
        params["slopes"] = torch.rand(H, generator=gen).cuda()
    with torch.no_grad():
        got = op.paged(q, k, v, table, kv_lens, return_lse=True, **options, **params)
        ref = op.reference_paged(q.double(), k.double(), v.double(), table, kv_lens,
                                 return_lse=True, **{n: t.double() for n, t in params.items()})
        low = op.reference_paged(q, k, v, table, kv_lens, return_lse=True, **params)
    for what, g, r, lo in zip(("out", "lse"), got, ref, low):
        assert not torch.isnan(g).any(), what
        assert error(g, r) <= bound(lo, r), what
