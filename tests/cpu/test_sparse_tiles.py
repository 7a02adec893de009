"""Block-sparse tile lists (flashgen/runtime/sparse.py) against a brute-force expansion of
the layout to elements: every tile with a visible element is listed, once, in order, and
flagged partial exactly when some of its in-bounds elements are hidden."""
from pathlib import Path

import pytest
import torch

import flashgen
from flashgen.plan.tiles import TileOverride, plan_for
from flashgen.render.tile_class import scans_tables
from flashgen.runtime.sparse import DENSE, MaskTiles, SparseTiles, sparse_tiles, tile_lists


def _brute(layout, bq, bk, tq, tk, nq, nk):
    elements = layout.repeat_interleave(bq, 1).repeat_interleave(bk, 2)[:, :nq, :nk]
    out = {}
    for h in range(layout.shape[0]):
        for i in range(-(-nq // tq)):
            for j in range(-(-nk // tk)):
                tile = elements[h, i * tq:(i + 1) * tq, j * tk:(j + 1) * tk]
                out[h, i, j] = (bool(tile.any()), bool(tile.all()))
    return out


def _listed(count, tiles, h, row):
    return tiles[h, row, :count[h, row]].tolist()


@pytest.mark.parametrize("bq,bk,tq,tk,nq,nk", [
    (64, 64, 128, 128, 300, 500),     # tiles cover several blocks
    (128, 128, 64, 64, 300, 257),     # blocks cover several tiles
    (16, 32, 64, 64, 100, 130),
    (128, 64, 128, 64, 1, 4096),
    (32, 128, 128, 32, 333, 333),
])
def test_tile_lists_match_the_element_layout(bq, bk, tq, tk, nq, nk):
    gen = torch.Generator().manual_seed(bq * 7 + nk)
    qb, kb = -(-nq // bq), -(-nk // bk)
    layout = torch.rand(2, qb, kb, generator=gen) < 0.4
    count_q, tiles_q, count_k, tiles_k = tile_lists(layout, bq, bk, tq, tk, nq, nk)
    for (h, i, j), (any_, all_) in _brute(layout, bq, bk, tq, tk, nq, nk).items():
        for entries, tile in ((_listed(count_q, tiles_q, h, i), j), (_listed(count_k, tiles_k, h, j), i)):
            hits = [e for e in entries if e >> 1 == tile]
            assert len(hits) == (1 if any_ else 0), (h, i, j)
            if any_:
                assert (hits[0] & 1) == (not all_), (h, i, j)
    for count, tiles in ((count_q, tiles_q), (count_k, tiles_k)):
        for h in range(2):
            for row in range(count.shape[1]):
                listed = [e >> 1 for e in _listed(count, tiles, h, row)]
                assert listed == sorted(listed)


def test_pattern_lists_pack_in_kernel_order():
    spec = flashgen.load("butterfly_causal")
    plan = plan_for(spec, 64)
    tiles = sparse_tiles(spec, None, plan, 1000, 1000, torch.device("cpu"))
    assert isinstance(tiles, SparseTiles) and len(tiles.ints()) == len(DENSE) == 17
    assert tiles.ints()[1:4] == [1, 8, 8]            # heads, q blocks, kv blocks of 128
    assert tiles.ints()[6] == 1 and tiles.ints()[-1] == 0   # one batch; layout lists
    assert sparse_tiles(spec, None, plan, 1000, 1000, torch.device("cpu")) is tiles


def test_runtime_layout_lists_follow_in_place_edits():
    spec = flashgen.load("block_layout")
    plan = plan_for(spec, 64)
    layout = torch.ones(1, 2, 2, dtype=torch.bool)
    first = sparse_tiles(spec, layout, plan, 256, 256, torch.device("cpu"))
    assert sparse_tiles(spec, layout, plan, 256, 256, torch.device("cpu")) is first
    layout[0, 0, 1] = False
    second = sparse_tiles(spec, layout, plan, 256, 256, torch.device("cpu"))
    assert second is not first and second.by_q[0][0, 0].item() == 1


def test_plan_shrinks_the_forward_tile_to_the_blocks():
    bigbird = plan_for(flashgen.load("bigbird"), 64)          # 64 x 64 blocks
    assert (bigbird.forward.block_m, bigbird.forward.block_n, bigbird.forward.warps) == (64, 64, 4)
    dense = flashgen.load("dense")
    # dense d64: the warp-specialised forward's 192-row Q tile, three consumers (blocks
    # shorter than 128 rows, as bigbird's, keep the one-warpgroup CTA's 64)
    assert (plan_for(dense, 64).forward.block_m, plan_for(dense, 64).forward.block_n) == (192, 128)
    mma = plan_for(dense, 64, arch="sm_80").forward
    assert (mma.block_m, mma.block_n) == (128, 128)


def test_forward_family_by_arch_and_head_dim():
    """sm_90a runs the forward on warpgroup MMA where its loads and shapes fit (d and dv of
    64, 128, 256): a producer and three consumers at d = 64, two above (160 keys per tile
    at d = 128, 80 at d = 256: ws_block_n); everything else, and any arch before Hopper, on mma.sync. A family
    can be asked for by name; the wgmma one only where it fits."""
    from flashgen.plan.tiles import TileError, TileOverride
    from flashgen.render.kernels import render_units
    causal = flashgen.load("causal")
    for d, tile, warps, producer in ((64, (192, 128), 16, True), (128, (128, 160), 12, True),
                                     (256, (128, 80), 12, True)):
        f = plan_for(causal, d, arch="sm_90a").forward
        assert (f.family, f.block_m, f.block_n, f.warps, f.producer) == \
            ("wgmma", *tile, warps, producer), d
        assert plan_for(causal, d, arch="sm_80").forward.family == "mma"
    # the warp-specialised kernel is the default; the family named "wgmma" and a
    # hand-picked tile keep the two-warpgroup CTA, and so does a layout of 64-row blocks
    plain = plan_for(causal, 128, TileOverride(family="wgmma"), "sm_90a").forward
    assert (plain.producer, plain.warps) == (False, 8)
    assert not plan_for(causal, 128, TileOverride(forward=(128, 64)), "sm_90a").forward.producer
    assert not plan_for(flashgen.load("bigbird"), 128, arch="sm_90a").forward.producer
    for d in (16, 32, 96, 192):
        assert plan_for(causal, d, arch="sm_90a").forward.family == "mma"
    mma = plan_for(causal, 128, TileOverride(family="mma"), "sm_90a").forward
    assert (mma.family, mma.block_m, mma.block_n, mma.warps) == ("mma", 128, 64, 4)
    with pytest.raises(TileError, match="sm_90a"):
        plan_for(causal, 128, TileOverride(family="wgmma"), "sm_80")
    with pytest.raises(TileError, match="family must be one of"):
        flashgen.compile("causal", family="tcgen05")
    # d = 64 where the score reads tables: one warpgroup per CTA of 64 keys, three CTAs
    # per SM (the warp-specialised consumers spill there)
    t5 = plan_for(flashgen.load("t5_bias"), 64, arch="sm_90a").forward
    assert (t5.block_m, t5.block_n, t5.producer) == (64, 64, False)
    assert t5.smem_bytes(64, 64) * 3 <= 227 * 1024
    # the rendered forward unit instantiates the family's kernel
    assert "forward_kernel_sm90" in render_units(causal, "x", "bf16", 128, arch="sm_90a")[
        "forward_bf16_d128.cu"]
    assert "forward_kernel_sm90" not in render_units(causal, "x", "bf16", 128, arch="sm_80")[
        "forward_bf16_d128.cu"]


def test_backward_family_by_arch_and_head_dim():
    """The backward follows the forward onto warpgroup MMA up to d = 128: 128 keys in two
    warpgroups, 64-row Q tiles, warp-specialised (a producer warpgroup feeding them);
    64 keys (one warpgroup, no producer) under a layout of narrower blocks. At d = 256 64
    keys, the two consumers splitting the head dim, with the mma.sync backward beside it
    for tensors TMA cannot address. Other archs, a family asked as "mma" and hand-picked
    backward tiles of other shapes stay mma.sync."""
    from flashgen.plan.tiles import TileOverride
    from flashgen.render.kernels import render_units
    causal = flashgen.load("causal")
    for d in (64, 128):
        b = plan_for(causal, d, arch="sm_90a").backward
        assert (b.family, b.block_m, b.block_n, b.warps, b.stages) == ("wgmma", 64, 128, 8, 3)
        assert b.producer and "producer warpgroup (TMA)" in plan_for(causal, d).describe()[1]
        assert b.smem_bytes(d, d) <= 227 * 1024
        assert plan_for(causal, d, arch="sm_80").backward.family == "mma"
        assert plan_for(causal, d, TileOverride(family="mma"), "sm_90a").backward.family == "mma"
    wide = plan_for(causal, 256, arch="sm_90a").backward
    assert (wide.family, wide.block_m, wide.block_n, wide.producer, wide.split, wide.stages,
            wide.fallback_stages) == ("wgmma", 64, 64, True, True, 2, 2)
    assert "splitting the head dim" in plan_for(causal, 256).describe()[1]
    assert wide.smem_bytes(256, 256) <= 227 * 1024
    assert plan_for(causal, 256, arch="sm_80").backward.family == "mma"
    unit = render_units(causal, "x", "bf16", 256, arch="sm_90a")["backward_bf16_d256.cu"]
    assert ("backward_kernel_sm90_split" in unit and "BackwardTilesSm90Split<256, 256, 2>" in unit
            and "fg::BackwardTiles<256, 256, 64, 64, 8, 2>" in unit)
    assert plan_for(causal, 128, TileOverride(backward=(128, 64, 8)),
                    "sm_90a").backward.family == "mma"
    one_warpgroup = plan_for(causal, 128, TileOverride(backward=(64, 64, 4)), "sm_90a").backward
    assert (one_warpgroup.family, one_warpgroup.block_n, one_warpgroup.warps,
            one_warpgroup.producer) == ("wgmma", 64, 4, False)
    assert plan_for(causal, 128, TileOverride(backward=(64, 128, 8)), "sm_90a").backward.producer
    bigbird = plan_for(flashgen.load("bigbird"), 64, arch="sm_90a").backward   # 64 x 64 blocks
    assert (bigbird.family, bigbird.block_n, bigbird.warps, bigbird.producer) == \
        ("wgmma", 64, 4, False)
    unit = render_units(causal, "x", "bf16", 128, arch="sm_90a")["backward_bf16_d128.cu"]
    assert "backward_kernel_sm90" in unit and "BackwardTilesSm90<128, 128, 64, 128>" in unit


def test_mask_class_lists_keep_unskipped_tiles_in_order_with_partial_bits():
    # int8 classes [batches 2, heads 1, q tiles 2, kv tiles 3]: 0 skip, 1 full, 2 partial
    fwd = torch.tensor([[[[1, 0, 2], [0, 0, 1]]], [[[0, 0, 0], [2, 1, 0]]]], dtype=torch.int8)
    lists = MaskTiles.of(fwd, fwd)
    count, tiles = lists.by_q
    assert count.tolist() == [[[2, 1]], [[0, 2]]]
    assert tiles[0, 0, 0, :2].tolist() == [2 * 0, 2 * 2 + 1]      # tile 0 full, tile 2 partial
    assert tiles[1, 0, 1, :2].tolist() == [2 * 0 + 1, 2 * 1]
    count, tiles = lists.by_kv                                     # per KV tile, its Q tiles
    assert count.tolist() == [[[1, 0, 2]], [[1, 1, 0]]]
    assert tiles[0, 0, 2, :2].tolist() == [2 * 0 + 1, 2 * 1]
    ints = lists.ints()
    assert len(ints) == len(DENSE) and ints[:4] == [0, 0, 0, 0] and ints[-1] == 1
    assert ints[6:10] == [2, 1, 2, 3]                              # batches, heads, rows, cols


def test_masks_that_read_tables_over_tiles_take_runtime_lists():
    assert scans_tables(flashgen.load("document"))            # doc[b, q_idx]
    for name in ("key_padding", "causal", "alibi", "dense"):       # lens[b]: exact, per tile
        assert not scans_tables(flashgen.load(name)), name
    assert not scans_tables(flashgen.load("bigbird"))         # block-sparse: its layout


def test_mask_tile_lists_are_built_once_per_tensor_version(monkeypatch):
    """The launcher's per-call path for a data-dependent mask (runtime/launch.py
    _mask_tiles), with the GPU classification faked: lists at both passes' tile sizes,
    per batch entry (document reads b, not h), kept until `doc` is edited in place."""
    from flashgen.runtime import launch
    calls = []

    def fake_call(library, function, ints, floats, device):
        batches, heads, _, _, bm, bn, ptr = ints[:7]
        calls.append((function, batches, heads, bm, bn))
        for t in created:                            # the class grid the call would fill
            if t.data_ptr() == ptr:
                t.fill_(1)                           # every tile full

    created = []
    real_empty = torch.empty

    def tracking_empty(*shape, **kw):
        t = real_empty(*shape, **kw)
        if kw.get("dtype") is torch.int8:
            created.append(t)
        return t

    monkeypatch.setattr(launch, "_call", fake_call)
    monkeypatch.setattr(launch, "_library", lambda key, q, frame=None: None)
    monkeypatch.setattr(launch, "_arch", lambda index: "sm_90a")
    monkeypatch.setattr(launch.torch, "empty", tracking_empty)
    op = flashgen.compile("document")
    assert launch.variant(op.key).mask_tiles_per == (True, False)
    q = torch.zeros(2, 3, 256, 64, dtype=torch.bfloat16)
    doc = torch.zeros(2, 256, dtype=torch.int32)
    sizes = launch.Sizes.of(q, q)
    first = launch._mask_tiles(op.key, sizes, q, [doc], [])
    plan = plan_for(op.spec, 64)
    assert calls == [("flashgen_tile_classes", 2, 1, plan.forward.block_m, plan.forward.block_n),
                     ("flashgen_tile_classes", 2, 1, plan.backward.block_m, plan.backward.block_n)]
    assert first.by_q[0].shape == (2, 1, -(-256 // plan.forward.block_m))
    assert launch._mask_tiles(op.key, sizes, q, [doc], []) is first and len(calls) == 2
    doc[:, 128:] = 1                                 # in place: rebuilt
    assert launch._mask_tiles(op.key, sizes, q, [doc], []) is not first and len(calls) == 4
    assert launch.variant(flashgen.compile("causal").key).mask_tiles_per is None


def test_warp_specialised_forward_plan():
    """family="wgmma_ws": a producer warpgroup and two consumers, as many K/V stages as fit:
    128 x 128 tiles where a row's keys are few (the sliding window), 128 x 160 where they
    run long (causal; 80 keys at d = 256: ws_block_n); hand-picked KV tiles keep the
    producer; the backward stays the wgmma family's."""
    from flashgen.plan.tiles import TileError, TileOverride
    causal, window = flashgen.load("causal"), flashgen.load("sliding_window")
    plan = plan_for(window, 128, TileOverride(family="wgmma_ws"), "sm_90a")
    f = plan.forward
    assert (f.family, f.producer, f.block_m, f.block_n, f.warps, f.kv_stages) == \
        ("wgmma", True, 128, 128, 12, 3)
    assert f.smem_bytes(128, 128) <= 227 * 1024
    f = plan_for(causal, 128, TileOverride(family="wgmma_ws"), "sm_90a").forward
    assert (f.block_m, f.block_n, f.kv_stages) == (128, 160, 2)
    assert plan_for(causal, 64, TileOverride(family="wgmma_ws"), "sm_90a").forward.kv_stages == 4
    tile = plan_for(causal, 128, TileOverride(family="wgmma_ws", forward=(128, 64)), "sm_90a")
    assert (tile.forward.producer, tile.forward.block_n) == (True, 64)
    persistent = plan_for(window, 128, TileOverride(family="wgmma_ws_persistent"), "sm_90a")
    assert persistent.forward.producer and persistent.forward.persistent
    assert "persistent" in persistent.describe()[0]
    # d = 128: an output stage per consumer and two Q slots beside two K/V stages (224
    # KiB), where the grid has three stages; at 160 keys the output stage and one Q slot
    assert (persistent.forward.o_stage, persistent.forward.q_slots,
            persistent.forward.kv_stages) == (True, 2, 2)
    assert "an output stage per consumer" in persistent.describe()[0]
    f = plan_for(causal, 128, TileOverride(family="wgmma_ws_persistent"), "sm_90a").forward
    assert (f.block_n, f.o_stage, f.q_slots, f.kv_stages) == (160, True, 1, 2)
    with pytest.raises(TileError, match="BM is 128"):
        plan_for(causal, 128, TileOverride(family="wgmma_ws", forward=(64, 64)), "sm_90a")
    assert plan.backward.family == "wgmma"
    assert "producer warpgroup" in plan.describe()[0]
    # d = 256: 80 keys (a consumer's O takes 128 registers), two stages, and the default
    # there too
    wide = plan_for(causal, 256, arch="sm_90a").forward
    assert (wide.producer, wide.block_n, wide.kv_stages) == (True, 80, 2)
    assert plan_for(causal, 256, TileOverride(family="wgmma_ws"), "sm_90a").forward == wide
    with pytest.raises(TileError, match="321 KiB of shared memory at head dim 256"):
        plan_for(causal, 256, TileOverride(family="wgmma_ws", forward=(128, 128)), "sm_90a")


def test_warp_specialised_forward_takes_wider_key_tiles():
    """By hand the warp-specialised forward takes FlashAttention-3's tiles that are not
    powers of two (the N of its Q K^T's wgmma), each in the richest shared-memory form that
    fits; the other families keep powers of two, and a block-sparse spec a tile that
    nests with its blocks."""
    from flashgen.plan.tiles import TileError, TileOverride
    causal, persistent = flashgen.load("causal"), "wgmma_ws_persistent"

    def forward(d, tile, family=persistent, spec=causal):
        return plan_for(spec, d, TileOverride(forward=tile, family=family), "sm_90a").forward
    wide = forward(128, (128, 176))   # two 88 KiB K/V stages: one Q slot, no output stage
    assert (wide.block_n, wide.kv_stages, wide.q_slots, wide.o_stage) == (176, 2, 1, False)
    assert wide.smem_bytes(128, 128) <= 227 * 1024
    staged = forward(128, (128, 160))   # 80 KiB stages leave room for the output stage
    assert (staged.kv_stages, staged.q_slots, staged.o_stage) == (2, 1, True)
    assert forward(256, (128, 80), "wgmma_ws").kv_stages == 2
    with pytest.raises(TileError, match="takes BN of 32, 64, 80"):
        forward(128, (128, 168))
    with pytest.raises(TileError, match="power of two"):
        forward(128, (128, 176), "mma")
    with pytest.raises(TileError, match="whole 128 x 128 blocks or lie inside one; use a power"):
        forward(128, (128, 176), spec=flashgen.load("block_layout"))


def test_warp_specialised_key_tiles_are_the_wgmma_shapes():
    """plan/tiles.py's WS_KEY_TILES and wgmma.cuh's wgmma_ss shapes are one list: a tile
    check_override accepts has its Q K^T instruction, and a new shape is a tile a user may ask."""
    import re
    from flashgen.plan.tiles import WS_KEY_TILES
    header = (Path(__file__).resolve().parents[2] / "templates/kernels/wgmma.cuh").read_text()
    shapes = {int(n) for n in re.findall(r'^FG_WGMMA_SS\(\d+, "m64n(\d+)k16"', header, re.M)}
    assert shapes == set(WS_KEY_TILES)


def test_three_consumers_at_d64():
    """d = 64's warp-specialised forward has three consumers (192 query rows), whose
    deterministic dQ runs on 96-row halves of its tiles, and so does the persistent
    kernel's; a block-sparse layout, a per-element integer division, a mask reading
    tables and a hand-picked 128-row tile keep two."""
    from flashgen.plan.tiles import TileError, TileOverride
    causal = flashgen.load("causal")
    f = plan_for(causal, 64, arch="sm_90a").forward
    assert (f.producer, f.block_m, f.consumers, f.warps, f.block_n, f.dq_block_m) == \
        (True, 192, 3, 16, 128, 96)
    assert f.smem_bytes(64, 64) <= 227 * 1024
    assert "3 consumer warpgroups" in plan_for(causal, 64, arch="sm_90a").describe()[0]
    assert plan_for(causal, 128, arch="sm_90a").forward.consumers == 2
    assert plan_for(causal, 128, arch="sm_90a").forward.dq_block_m == 128
    for name in ("dilated", "document", "key_padding"):
        assert plan_for(flashgen.load(name), 64, arch="sm_90a").forward.block_m == 128, name
    for name in ("dense", "sliding_window", "prefix_lm", "alibi", "dropout_causal"):
        assert plan_for(flashgen.load(name), 64, arch="sm_90a").forward.block_m == 192, name
    assert plan_for(flashgen.load("block_layout"), 64, arch="sm_90a").forward.block_m == 128
    persistent = plan_for(causal, 64, TileOverride(family="wgmma_ws_persistent"), "sm_90a")
    assert (persistent.forward.block_m, persistent.forward.q_slots) == (192, 2)
    assert not persistent.forward.o_stage  # three consumers at 160 registers: no stage
    two = plan_for(causal, 64, TileOverride(family="wgmma_ws", forward=(128, 128)), "sm_90a")
    assert (two.forward.producer, two.forward.consumers) == (True, 2)
    with pytest.raises(TileError, match="192 \\(three\\) at d = 64"):
        plan_for(causal, 128, TileOverride(family="wgmma_ws", forward=(192, 128)), "sm_90a")


def test_wide_key_tiles_where_rows_run_long():
    """The warp-specialised forward takes FlashAttention-3's wider key tiles (160 at
    d = 128, 80 at d = 256) where a row's keys run long; a window, a mask reading tables
    (document, key padding), float parameters' gradients (ALiBi's slopes, whose exact-P
    instance spilled at 160) and block-sparse layouts keep 128 / 64 (tiles.ws_block_n).
    The general instance (packed, paged, split-KV) keeps 128 / 64 everywhere, so that its
    tiles nest in 128- and 256-row pages (ForwardPlan.general_keys)."""
    wide = {"dense", "causal", "causal_bottom_right", "prefix_lm", "softcap", "dropout_causal"}
    narrow = {"sliding_window", "document", "key_padding", "alibi", "temperature",
              "block_layout", "alibi_window_softcap"}
    for name in wide | narrow:
        forward = plan_for(flashgen.load(name), 128, arch="sm_90a").forward
        assert forward.producer and forward.block_n == (160 if name in wide else 128), name
        assert forward.general_keys == 128, name
    for name, keys in (("dense", 80), ("softcap", 80), ("causal", 80)):
        forward = plan_for(flashgen.load(name), 256, arch="sm_90a").forward
        assert (forward.block_n, forward.general_keys) == (keys, 64), name
    # a hand-picked tile is the general instance's too
    forward = plan_for(flashgen.load("dense"), 128,
                       TileOverride((128, 176), family="wgmma_ws_persistent"), "sm_90a").forward
    assert forward.general_keys == forward.block_n == 176
