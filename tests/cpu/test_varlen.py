"""The packed (varlen) batch on the CPU: its reference is each sequence called alone
(tables read at the sequence's own row, dropout drawn from its own stream), its arguments
are checked with plain messages, and the kernels' view of a packed tensor."""
import pytest
import torch

import flashgen
from flashgen.runtime import launch
from flashgen.runtime.arguments import ArgumentError, bind_varlen, packed_view


def _packed(lens, H, d, gen):
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return torch.randn(int(cu[-1]), H, d, generator=gen, dtype=torch.float64), cu


def _alone(t, cu, b):
    return t[cu[b]:cu[b + 1]].transpose(0, 1).unsqueeze(0)


@pytest.mark.parametrize("spec", ["causal_bottom_right", "document", "dropout_causal", "bigbird"])
def test_reference_varlen_is_each_sequence_alone(spec):
    op = flashgen.compile(spec)
    gen = torch.Generator().manual_seed(1)
    lens_q, lens_k = [5, 40, 1, 0, 33], [5, 40, 1, 7, 33]
    if spec == "causal_bottom_right":
        lens_k = [9, 100, 3, 7, 33]
    q, cu_q = _packed(lens_q, 4, 64, gen)
    k, cu_k = _packed(lens_k, 2, 64, gen)
    v, _ = _packed(lens_k, 2, 64, gen)
    params, call = {}, {}
    if spec == "document":       # [B, N]: the longest sequence's length
        params["doc"] = torch.randint(0, 3, (5, 40), generator=gen).sort(-1).values.int()
    if spec == "dropout_causal":
        call = {"dropout_p": 0.3, "seed": (7, 0)}
    out, lse = op.reference_varlen(q, k, v, cu_q, cu_k, return_lse=True, **call, **params)
    assert out.shape == (sum(lens_q), 4, 64) and lse.shape == (4, sum(lens_q))
    for b in range(5):
        if lens_q[b] == 0:
            continue
        # alone, sequence b is batch entry 0: its table row and dropout stream move with it
        alone = {n: t[b:b + 1, :lens_q[b]] for n, t in params.items()}
        if spec == "dropout_causal":
            from flashgen.reference.attention import run
            from flashgen.runtime.arguments import bind
            import dataclasses
            one = bind(op.spec, _alone(q, cu_q, b), _alone(k, cu_k, b), _alone(v, cu_k, b), **call)
            o, l = run(dataclasses.replace(one, first_batch=b), return_lse=True)
        elif spec == "bigbird":   # the pattern is the longest sequences', cut short
            o, l = None, None
        else:
            o, l = op.reference(_alone(q, cu_q, b), _alone(k, cu_k, b), _alone(v, cu_k, b),
                                return_lse=True, **alone)
        if o is not None:
            torch.testing.assert_close(out[cu_q[b]:cu_q[b + 1]], o[0].transpose(0, 1))
            torch.testing.assert_close(lse[:, cu_q[b]:cu_q[b + 1]], l[0])


def test_dropout_streams_follow_the_batch_entry():
    from flashgen.reference.philox import keep_mask
    whole = keep_mask(3, 0, 0.5, 3, 2, 16, 16)
    assert torch.equal(keep_mask(3, 0, 0.5, 1, 2, 16, 16, first_batch=2)[0], whole[2])


def test_varlen_arguments_get_plain_messages():
    op = flashgen.compile("causal")
    q = torch.randn(10, 2, 64)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(ArgumentError, match=r"packed tensor \[total, heads, head_dim\]"):
        op.reference_varlen(q[None], q, q, cu, cu)
    with pytest.raises(ArgumentError, match="int32 tensor"):
        op.reference_varlen(q, q, q, cu.long(), cu)
    with pytest.raises(ArgumentError, match="must rise from 0 to the packed rows"):
        op.reference_varlen(q, q, q, torch.tensor([0, 4, 9], dtype=torch.int32), cu)
    with pytest.raises(ArgumentError, match="max_seqlen_k must be an int >= 0"):
        bind_varlen(op.spec, q, q, q, cu, cu, max_seqlen_q=6, max_seqlen_k=-1)
    with pytest.raises(ArgumentError, match="the same sequences"):
        op.reference_varlen(q, q, q, cu[:2], cu)
    with pytest.raises(ArgumentError, match="needs CUDA tensors"):
        op.varlen(q.bfloat16(), q.bfloat16(), q.bfloat16(), cu, cu)


def test_kernels_see_packed_tensors_with_batch_stride_zero():
    q = torch.randn(10, 4, 64)
    view = packed_view(q, 3)
    assert view.shape == (3, 4, 10, 64) and view.stride()[:3] == (0, 64, 256)
    n = launch.Sizes.of(q, torch.randn(12, 2, 64),
                        launch.Varlen(torch.tensor([0, 3, 10], dtype=torch.int32),
                                      torch.tensor([0, 5, 12], dtype=torch.int32), 7, 7))
    assert (n.B, n.H, n.Hkv, n.Nq, n.Nk, n.rows) == (2, 4, 2, 7, 7, 10)
    assert n.row_buffer(8, like=q).shape == (4, 10, 8)


def _paged_cache(lens, page_size, Hkv, d, gen):
    """A shuffled pool of pages holding each entry's keys, and its block table."""
    per = [-(-n // page_size) for n in lens]
    pages = torch.randperm(sum(per) + 3, generator=gen)          # spare pages, out of order
    table = torch.zeros(len(lens), max(per), dtype=torch.int32)
    at = 0
    for b, n in enumerate(per):
        table[b, :n] = pages[at:at + n]
        at += n
    cache = torch.randn(sum(per) + 3, page_size, Hkv, d, generator=gen, dtype=torch.float64)
    return cache, table


def test_reference_paged_reads_each_entry_from_its_pages():
    op = flashgen.compile("causal_bottom_right")
    gen = torch.Generator().manual_seed(2)
    lens, ps = [300, 5, 128], 128
    k_cache, table = _paged_cache(lens, ps, 2, 64, gen)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(3, 4, 2, 64, generator=gen, dtype=torch.float64)
    kv_lens = torch.tensor(lens, dtype=torch.int32)
    out, lse = op.reference_paged(q, k_cache, v_cache, table, kv_lens, return_lse=True)
    assert out.shape == (3, 4, 2, 64) and lse.shape == (3, 4, 2)
    for b, n in enumerate(lens):
        rows = torch.arange(n)
        k = k_cache.reshape(-1, 2, 64)[table[b, rows // ps].long() * ps + rows % ps]
        v = v_cache.reshape(-1, 2, 64)[table[b, rows // ps].long() * ps + rows % ps]
        o, l = op.reference(q[b:b + 1], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                            return_lse=True)
        torch.testing.assert_close(out[b], o[0])
        torch.testing.assert_close(lse[b], l[0])


def test_paged_arguments_get_plain_messages():
    op = flashgen.compile("causal_bottom_right")
    q = torch.randn(2, 4, 1, 64)
    cache = torch.randn(6, 128, 2, 64)
    table = torch.zeros(2, 3, dtype=torch.int32)
    lens = torch.tensor([10, 20], dtype=torch.int32)
    with pytest.raises(ArgumentError, match=r"k_cache must be \[pages, page_size"):
        op.reference_paged(q, cache[0], cache, table, lens)
    with pytest.raises(ArgumentError, match="block_table must be an int32 tensor"):
        op.reference_paged(q, cache, cache, table.long(), lens)
    with pytest.raises(ArgumentError, match="forward only"):
        op.paged(q.requires_grad_(), cache, cache, table, lens)


def test_page_sizes_the_kernels_take():
    """mma.sync: a K/V tile lies in one page, so a page that is not a multiple of the tile
    is refused with the sizes that work. sm90 family: any page size; where a tile spans
    pages (pages shorter than a tile, or 256-row pages under the 160-key tiles of d = 128)
    each row finds its page."""
    from flashgen.api import check_page_size
    from flashgen.plan.tiles import ForwardPlan
    wgmma, mma = ForwardPlan(128, 160, 12, "wgmma"), ForwardPlan(128, 64, 4, "mma")
    for ok in (16, 64, 128, 160, 192, 256):
        check_page_size(wgmma, ok)
    check_page_size(mma, 128)
    with pytest.raises(ArgumentError, match="page_size is 32.*multiple of 64$"):
        check_page_size(mma, 32)
