"""`flashgen explain`: the tile map (what the kernels do with each tile pair, counted by
hand here), the IO model (bytes and FLOPs of a small call, by hand), and the command's
sections, without a GPU."""
import pytest
import torch

import flashgen
from flashgen import cli
from flashgen.build import cache
from flashgen.plan.io_model import Ceilings, io_model
from flashgen.plan.tile_map import tile_map
from flashgen.plan.tiles import plan_for


@pytest.fixture(scope="module", autouse=True)
def host_cache(tmp_path_factory):
    """One build cache for the module: each spec's host library is built once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLASHGEN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _counts(spec_name, n, head_dim, **params):
    spec = flashgen.load(spec_name)
    plan = plan_for(spec, head_dim)
    tiles = tile_map(spec, n, n, params=params or None)
    return (tiles.grid(plan.forward.block_m, plan.forward.block_n).counts(),
            tiles.grid(plan.backward.block_m, plan.backward.block_n).counts())


@pytest.mark.nvcc
def test_causal_tiles_at_1024():
    # d = 128: forward tiles of 128 x 64 -> 8 Q tiles x 16 KV tiles. Q tile i meets KV
    # tiles 2i and 2i + 1 on the diagonal (partial), sees 2i before them in full and
    # skips the 14 - 2i after them.
    forward, backward = _counts("causal", 1024, 128)
    assert forward == {"skip": 56, "full": 56, "partial": 16}
    # backward tiles of 64 x 64: 16 x 16, the diagonal partial, below it full
    assert backward == {"skip": 120, "full": 120, "partial": 16}
    # d = 64: 128 x 128 tiles, 8 x 8
    forward, _ = _counts("causal", 1024, 64)
    assert forward == {"skip": 28, "full": 28, "partial": 8}


@pytest.mark.nvcc
def test_causal_picture_and_visible_fraction():
    spec = flashgen.load("causal")
    tiles = tile_map(spec, 1024, 1024)
    picture, per_character = tiles.grid(128, 64).picture()
    assert per_character == (1, 1)
    assert picture[0] == "++" + "." * 14
    assert picture[3] == "#" * 6 + "++" + "." * 8
    assert picture[7] == "#" * 14 + "++"
    fraction, row_step = tiles.visible
    assert row_step == 1
    assert fraction == pytest.approx(1024 * 1025 / 2 / 1024 ** 2)


@pytest.mark.nvcc
def test_sliding_window_tiles():
    # window 256 at d = 128 (tiles 128 x 64): Q tile i sees KV tiles 2i - 4 .. 2i + 1;
    # 2i - 2 and 2i - 1 are full, the others partial (fewer in the first three rows)
    forward, _ = _counts("sliding_window", 1024, 128, window=256)
    assert forward == {"skip": 86, "full": 14, "partial": 28}


def test_block_layout_tiles():
    # blocks of 128: the diagonal and the first column of 8 x 8 blocks (15 blocks)
    spec = flashgen.load("block_layout")
    plan = plan_for(spec, 128)
    blocks = torch.arange(8)
    layout = ((blocks.view(-1, 1) == blocks.view(1, -1)) | (blocks.view(1, -1) == 0)).unsqueeze(0)
    tiles = tile_map(spec, 1024, 1024, layout=layout)
    # forward tiles of 128 x 64: two per block, all full (no mask, blocks whole)
    assert tiles.grid(plan.forward.block_m, plan.forward.block_n).counts() == \
        {"skip": 128 - 30, "full": 30, "partial": 0}
    # backward tiles of 64 x 64: four per block
    assert tiles.grid(plan.backward.block_m, plan.backward.block_n).counts() == \
        {"skip": 256 - 60, "full": 60, "partial": 0}
    assert tiles.visible == (15 / 64, 1)


def test_example_layout_and_ragged_end():
    # an example layout at 25 % density; the kernel takes a tile that reaches past the last
    # key as partial (the bounds mask), even where the layout is whole
    spec = flashgen.load("block_layout")
    tiles = tile_map(spec, 1000, 1000)
    assert tiles.layout.shape == (1, 8, 8)
    assert 0.05 < tiles.layout.float().mean() < 0.5
    classes = tiles.grid(128, 64).classes[0, 0]
    listed = tiles.layout[0].repeat_interleave(2, 1)[:, :16]
    assert torch.equal(classes != 0, listed)
    assert (classes[:, 15][listed[:, 15]] == 2).all()      # keys 960..1023: past 1000
    assert (classes[:, :15][listed[:, :15]] == 1).all()


@pytest.mark.nvcc
def test_io_model_of_a_small_causal_call():
    # causal, N = 256, d = 64, B = H = 1, 2-byte elements.
    spec = flashgen.load("causal")
    plan = plan_for(spec, 64)
    model = io_model(plan, tile_map(spec, 256, 256))
    n, d, e = 256, 64, 2
    # standard: Q, K, V read and O written; S and P each written and read
    assert model.forward.standard.total == 4 * n * d * e + 4 * n * n * e
    # tiled, forward tiles of 128 x 128: 2 x 2, the upper right one skipped -> 3 visited
    assert model.forward.tiled.total == (n * d * e                 # Q once
                                         + 3 * 128 * 2 * d * e     # K, V per visited pair
                                         + n * d * e + n * 4)      # O, lse (fp32)
    assert model.forward.flops == 3 * 128 * 128 * 2 * (d + d)
    assert model.forward.visited == 3 / 4
    sram = plan.forward.smem_bytes(d, d)
    assert model.forward.bound == pytest.approx(n * n * d * d / (sram / e) * e * 3 / 4)
    # backward: 7 N x N matrices moved, Q, K, V, dO, dO again, dQ, dK, dV
    assert model.backward.standard.total == 8 * n * d * e + 7 * n * n * e
    # tiled, backward tiles of 64 x 64: 4 x 4, 10 visited (diagonal and below)
    pairs = 10
    assert model.backward.tiled.total == (
        n * (2 * d * e + 4)                      # delta from O, dO
        + n * d * 4                              # dQ fp32 zeroed
        + n * 2 * d * e                          # K, V once
        + pairs * 64 * (2 * d * e + 8)           # Q, dO, lse, delta per visited pair
        + pairs * 64 * d * 4 * 2                 # dQ fp32 read + write per visited pair
        + n * 2 * d * e                          # dK, dV
        + n * d * (4 * 3 + e))                   # dQ scaled in place, converted
    assert model.backward.flops == pairs * 64 * 64 * 2 * (3 * d + 2 * d)
    # useful: visible elements over the visited tiles' elements
    assert model.forward.useful == pytest.approx(n * (n + 1) / 2 / (3 * 128 * 128))
    # the roofline: memory-bound at 1 TB/s and 1 PFLOP/s
    ceilings = Ceilings(1e12, 1e15, "test")
    assert model.forward.predicted(ceilings) == model.forward.tiled.total / 1e12
    assert model.predicted(ceilings) == pytest.approx(
        (model.forward.tiled.total + model.backward.tiled.total) / 1e12)


def test_sizes_argument():
    assert cli._sizes("8192") == (8192, 8192)
    assert cli._sizes("4096x8192") == (4096, 8192)
    with pytest.raises(SystemExit):
        cli.main(["explain", "causal", "--sizes", "4096y8192"])


@pytest.mark.nvcc
def test_explain_command_without_a_gpu(monkeypatch, capsys):
    # ptxas's report is tested with the build cache; here it is left out for speed
    monkeypatch.setattr(cache, "ptxas_report", lambda sources, arch: {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["explain", "causal", "--dtype", "bf16", "--head-dim", "64",
                     "--sizes", "1024", "--measure"]) == 0
    out = capsys.readouterr().out
    for expected in ("forward:  128 query rows x 128 keys", "== tile map at Nq = Nk = 1024",
                     "128 x 128 tiles (forward at head_dim 64)",
                     "skip 28 (43.8 %), full 28 (43.8 %), partial 8 (12.5 %)",
                     "64 x 64 tiles (backward at head_dim 64)",
                     "visible fraction of elements: 50.05 %", "== IO model",
                     "head_dim 64: B 16 x H 32, Nq = Nk = 1024", "standard", "tiled",
                     "Θ(N²d²/M)·s", "fwd+bwd   predicted", "no GPU: --measure needs one"):
        assert expected in out, f"{expected!r} not in:\n{out}"


@pytest.mark.nvcc
def test_explain_names_the_example_parameters(monkeypatch, capsys):
    monkeypatch.setattr(cache, "ptxas_report", lambda sources, arch: {})
    assert cli.main(["explain", "key_padding", "--dtype", "bf16", "--head-dim", "64",
                     "--sizes", "512", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "parameters from flashgen.runtime.examples.example_params" in out
    assert "kv_lengths: i32[2]" in out
    assert "over B 2 x H 1" in out        # the mask reads b: every batch has its own tiles
