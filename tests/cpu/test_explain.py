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


def _causal_by_hand(n: int, block_m: int, block_n: int) -> dict[str, int]:
    """Causal tile pairs of an n x n call: skipped when the first key comes after the last
    query, full when the last key is at or before the first query (and the tile ends
    inside the keys), else partial."""
    counts = {"skip": 0, "full": 0, "partial": 0}
    for q_lo in range(0, n, block_m):
        q_hi = min(n, q_lo + block_m) - 1
        for kv_lo in range(0, n, block_n):
            kv_hi = kv_lo + block_n - 1
            counts["skip" if kv_lo > q_hi else
                   "full" if kv_hi <= q_lo and kv_hi < n else "partial"] += 1
    return counts


@pytest.mark.nvcc
def test_causal_tiles_at_1024():
    tiles = tile_map(flashgen.load("causal"), 1024, 1024)
    # 128 x 64 tiles: 8 Q tiles x 16 KV tiles. Q tile i meets KV tiles 2i and 2i + 1 on
    # the diagonal (partial), sees the 2i before them in full and skips the 14 - 2i after.
    assert tiles.grid(128, 64).counts() == {"skip": 56, "full": 56, "partial": 16}
    # 64 x 64: 16 x 16, the diagonal partial, below it full; 128 x 128: 8 x 8
    assert tiles.grid(64, 64).counts() == {"skip": 120, "full": 120, "partial": 16}
    assert tiles.grid(128, 128).counts() == {"skip": 28, "full": 28, "partial": 8}
    # 64 query rows x 128 keys: 16 x 8; Q tile i meets KV tile i // 2 on the diagonal
    assert tiles.grid(64, 128).counts() == {"skip": 56, "full": 56, "partial": 16}
    # and at the plans' tiles, forward and backward, of every head dim
    for d in flashgen.load("causal").head_dims:
        plan = plan_for(flashgen.load("causal"), d)
        for tile in (plan.forward, plan.backward):
            assert tiles.grid(tile.block_m, tile.block_n).counts() == \
                _causal_by_hand(1024, tile.block_m, tile.block_n), (d, tile)
    # keys past the end make the last KV tile partial
    ragged = tile_map(flashgen.load("causal"), 1000, 1000)
    assert ragged.grid(128, 64).counts() == _causal_by_hand(1000, 128, 64)


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
    # window 256, 128 x 64 tiles: Q tile i sees KV tiles 2i - 4 .. 2i + 1; 2i - 2 and
    # 2i - 1 are full, the others partial (fewer in the first three rows)
    tiles = tile_map(flashgen.load("sliding_window"), 1024, 1024, params={"window": 256})
    assert tiles.grid(128, 64).counts() == {"skip": 86, "full": 14, "partial": 28}


def test_block_layout_tiles():
    # blocks of 128: the diagonal and the first column of 8 x 8 blocks (15 blocks)
    spec = flashgen.load("block_layout")
    blocks = torch.arange(8)
    layout = ((blocks.view(-1, 1) == blocks.view(1, -1)) | (blocks.view(1, -1) == 0)).unsqueeze(0)
    tiles = tile_map(spec, 1024, 1024, layout=layout)
    # 128 x 64 tiles: two per block, all full (no mask, blocks whole)
    assert tiles.grid(128, 64).counts() == {"skip": 128 - 30, "full": 30, "partial": 0}
    # 64 x 64 tiles: four per block
    assert tiles.grid(64, 64).counts() == {"skip": 256 - 60, "full": 60, "partial": 0}
    # the plans' tiles lie inside blocks: whole blocks' worth of full tiles
    plan = plan_for(spec, 128)
    for tile in (plan.forward, plan.backward):
        per_block = (128 // tile.block_m) * (128 // tile.block_n)
        counts = tiles.grid(tile.block_m, tile.block_n).counts()
        assert counts == {"skip": 64 * per_block - 15 * per_block, "full": 15 * per_block,
                          "partial": 0}
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
    f, b = plan.forward, plan.backward
    # standard: Q, K, V read and O written; S and P each written and read
    assert model.forward.standard.total == 4 * n * d * e + 4 * n * n * e
    # tiled: Q once; K, V once per visited pair; O and lse (fp32) once
    counts = _causal_by_hand(n, f.block_m, f.block_n)
    pairs = counts["full"] + counts["partial"]
    assert model.forward.tiled.total == (n * d * e + pairs * f.block_n * 2 * d * e
                                         + n * d * e + n * 4)
    assert model.forward.flops == pairs * f.block_m * f.block_n * 2 * (d + d)
    assert model.forward.visited == pairs / sum(counts.values())
    sram = f.smem_bytes(d, d)
    assert model.forward.bound == pytest.approx(n * n * d * d / (sram / e) * e * model.forward.visited)
    # useful: visible elements over the visited tiles' elements
    assert model.forward.useful == pytest.approx(n * (n + 1) / 2 / (pairs * f.block_m * f.block_n))
    # backward: 7 N x N matrices moved; Q, K, V, dO twice, dQ, dK, dV
    assert model.backward.standard.total == 8 * n * d * e + 7 * n * n * e
    counts = _causal_by_hand(n, b.block_m, b.block_n)
    pairs = counts["full"] + counts["partial"]
    assert model.backward.tiled.total == (
        n * (2 * d * e + 4)                      # delta from O, dO
        + n * d * 4                              # dQ fp32 zeroed
        + n * 2 * d * e                          # K, V once
        + pairs * b.block_m * (2 * d * e + 8)    # Q, dO, lse, delta per visited pair
        + pairs * b.block_m * d * 4 * 2          # dQ fp32 read + write per visited pair
        + n * 2 * d * e                          # dK, dV
        + n * d * (4 * 3 + e))                   # dQ scaled in place, converted
    assert model.backward.flops == pairs * b.block_m * b.block_n * 2 * (3 * d + 2 * d)
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
    f = plan_for(flashgen.load("causal"), 64).forward
    counts = _causal_by_hand(1024, f.block_m, f.block_n)
    total = sum(counts.values())
    for expected in (f"forward:  {f.block_m} query rows x {f.block_n} keys",
                     "== tile map at Nq = Nk = 1024",
                     f"{f.block_m} x {f.block_n} tiles: forward at head_dim 64",
                     ", ".join(f"{name} {n} ({100 * n / total:.1f} %)" for name, n in counts.items()),
                     "backward at head_dim 64", "visible fraction of elements: 50.05 %",
                     "== IO model", "head_dim 64: B 16 x H 32, Nq = Nk = 1024", "standard",
                     "tiled", "Θ(N²d²/M)·s", "fwd+bwd   predicted", "no GPU: --measure needs one"):
        assert expected in out, f"{expected!r} not in:\n{out}"


@pytest.mark.nvcc
def test_explain_names_the_example_parameters(monkeypatch, capsys):
    monkeypatch.setattr(cache, "ptxas_report", lambda sources, arch: {})
    assert cli.main(["explain", "key_padding", "--dtype", "bf16", "--head-dim", "64",
                     "--sizes", "512", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "parameters from flashgen.runtime.examples.example_params" in out
    assert "kv_lengths: i32[2]" in out
    assert "; over B 2 x H 1" in out      # the mask reads b: every batch has its own tiles


@pytest.mark.nvcc
def test_explain_says_when_the_bias_is_affine(monkeypatch, capsys):
    monkeypatch.setattr(cache, "ptxas_report", lambda sources, arch: {})
    assert cli.main(["explain", "alibi", "--dtype", "bf16", "--head-dim", "64",
                     "--sizes", "512"]) == 0
    out = capsys.readouterr().out
    assert "bias affine in kv_idx, growing by slopes[h] per key" in out
    assert "affine in q_idx, growing by -slopes[h] per query row" in out
    assert cli.main(["explain", "t5_bias", "--dtype", "fp16", "--head-dim", "64",
                     "--sizes", "512"]) == 0
    assert "affine" not in capsys.readouterr().out


def test_kernel_labels_read_both_spellings_of_bool_template_arguments():
    """ptxas names kernels with true/false or (bool)1/(bool)0, by nvcc version (the GPU
    machine's nvcc wrote the latter and explain crashed there)."""
    from flashgen.cli import _kernel_label
    for on, off in (("true", "false"), ("(bool)1", "(bool)0")):
        assert _kernel_label(f"void fg::backward_kernel<V, T, 128, {on}, {off}, {off}>(A)") == \
            "backward (dQ atomics)"
        assert _kernel_label(f"void fg::backward_kernel_sm90_ws<V, T, 128, 128, 64, 128, 2, {on}, "
                             f"{on}, {off}>(A)") == "backward, warp-specialised (dQ bulk adds) +dropout"
        assert _kernel_label(f"void fg::backward_kernel_sm90_split<V, T, 256, 256, 2, {on}, "
                             f"{off}, {on}>(A)") == \
            "backward, warp-specialised, split head dim (dQ atomics) +param grads"
        # the parameter list after the template arguments names VariantOf<false>
        assert _kernel_label(f"void fg::forward_kernel<fg_a::VariantOf<{off}>, T, 64, {off}, "
                             f"{on}, {off}>(A, fg_a::VariantOf<{off}>::Params)") == \
            "forward +exact P"
        assert _kernel_label(f"void fg::backward_kernel<V, T, 128, {off}, {off}, {on}>(A)") == \
            "backward (dK, dV) +param grads"
        assert _kernel_label(f"void fg::forward_kernel<V, T, 64, {on}, {off}, {off}>(A)") == \
            "forward +dropout"
        assert _kernel_label(f"void fg::forward_kernel<V, T, 64, {off}, {on}, {off}>(A)") == \
            "forward +exact P"
        assert _kernel_label(f"void fg::forward_kernel<V, T, 64, {off}, {off}, {on}>(A)") == \
            "forward (varlen / split-KV)"
        assert _kernel_label(f"void fg::dq_kernel<V, T, {off}>(A)") == "deterministic dQ"
    assert _kernel_label("void fg::combine_kernel<__half, 64>(A)").startswith("forward split-KV")


@pytest.mark.nvcc
def test_explain_gives_the_mask_solved_for_the_indices(monkeypatch, capsys):
    monkeypatch.setattr(cache, "ptxas_report", lambda sources, arch: {})
    assert cli.main(["explain", "sliding_window", "--dtype", "bf16", "--head-dim", "64",
                     "--sizes", "512"]) == 0
    out = capsys.readouterr().out
    assert ("keys a query may see (kv_range), the mask solved for kv_idx: "
            "kv_idx <= q_idx && kv_idx >= q_idx - window + 1") in out
    assert ("queries that may see a key (q_range), the mask solved for q_idx: "
            "q_idx >= kv_idx && q_idx <= window + kv_idx - 1") in out
    assert cli.main(["explain", "prefix_lm", "--dtype", "bf16", "--head-dim", "64",
                     "--sizes", "512"]) == 0
    out = capsys.readouterr().out
    assert "kv_idx <= prefix - 1 || kv_idx <= q_idx" in out
    assert "(q_range)" not in out     # a query sees the prefix wherever it is
