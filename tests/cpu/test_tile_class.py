"""Tile classification is sound: each shipped spec's tile_class(), compiled for the host by
flashgen/plan/tile_map.py (the code `flashgen explain` runs), is checked against the exact
mask (the reference evaluator) on every tile of kernel-sized and odd-sized tilings.

kSkip must mean "false everywhere", kFull "true everywhere"; and the masks the kernels
promise to skip statically (causal, bottom-right causal, sliding window, prefix-LM,
key padding by lengths) must actually produce skipped and full tiles."""
import random

import pytest
import torch
import torch.nn.functional as F

import flashgen
from flashgen.plan.tile_map import (FULL, PARTIAL, SKIP, host_module, index_ranges, mask_values,
                                    tile_classes, walks)
from flashgen.reference.attention import grid_variables
from flashgen.reference.evaluate import Evaluator
from flashgen.runtime.arguments import WHOLE, Frame
from flashgen.runtime.examples import example_params

B, H, N = 2, 2, 200
# masks whose tiles must be provably skipped, and provably full, by the static analysis
MUST_SKIP = {"causal", "causal_bottom_right", "sliding_window", "prefix_lm", "key_padding",
             "alibi", "dilated", "document", "alibi_window_softcap", "strided_causal",
             "butterfly_causal", "dropout_causal", "softcap"}
# masks whose key range, solved from the mask (flashgen/analysis/bounds.py), is for every
# query exactly the span from its first visible key to its last
EXACT_KEY_RANGE = {"causal", "causal_bottom_right", "sliding_window", "prefix_lm", "key_padding",
                   "alibi", "alibi_window_softcap", "softcap", "temperature", "dropout_causal"}
MUST_FULL = {"causal", "causal_bottom_right", "sliding_window", "prefix_lm", "key_padding",
             "alibi", "alibi_window_softcap", "softcap"}
# the shipped specs with a mask
MASKED = [n for n in flashgen.shipped() if flashgen.load(n).mask is not None]
_sizes = random.Random(1)
# the kernels' tile sizes, the walk's spans of 8 tiles along either side (TileWalk,
# walk.cuh), and odd ones: tiles start at many different offsets
TILINGS = [(16, 16), (64, 32), (64, 64), (128, 64), (128, 128), (1, 1), (16, 128), (128, 16),
           *((_sizes.randint(2, 50), _sizes.randint(2, 50)) for _ in range(12))]


@pytest.fixture(scope="module", autouse=True)
def host_cache(tmp_path_factory):
    """One build cache for the module: each spec's host library is built once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLASHGEN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _exact_mask(spec, params, frame: Frame = WHOLE) -> torch.Tensor:
    evaluator = Evaluator(spec, grid_variables(B, H, N, N, "cpu", frame), params, torch.float32,
                          "cpu")
    return evaluator(spec.mask).expand(B, H, N, N)


def _per_tile(mask: torch.Tensor, block_m: int, block_n: int, reduce, fill: bool):
    """reduce (any or all) over each block_m x block_n tile; `fill` past the ends."""
    pad_q, pad_k = -N % block_m, -N % block_n
    padded = F.pad(mask.to(torch.uint8), (0, pad_k, 0, pad_q), value=int(fill)).bool()
    tiles = padded.view(B, H, (N + pad_q) // block_m, block_m, (N + pad_k) // block_n, block_n)
    return reduce(reduce(tiles, dim=5), dim=3)


def check_tile_classes(spec, params, label: str) -> tuple[int, int]:
    """Assert no tile is wrongly skipped or called full on any tiling; (skipped, full)."""
    mask = _exact_mask(spec, params)
    skipped = full = 0
    for block_m, block_n in TILINGS:
        classes = tile_classes(spec, params, B, H, N, N, block_m, block_n)
        any_visible = _per_tile(mask, block_m, block_n, torch.any, False)
        all_visible = _per_tile(mask, block_m, block_n, torch.all, True)
        wrong_skip = (classes == SKIP) & any_visible
        wrong_full = (classes == FULL) & ~all_visible
        assert not wrong_skip.any(), \
            f"{label} {block_m}x{block_n}: tiles {wrong_skip.nonzero().tolist()} skipped with visible elements"
        assert not wrong_full.any(), \
            f"{label} {block_m}x{block_n}: tiles {wrong_full.nonzero().tolist()} full with hidden elements"
        skipped += int((classes == SKIP).sum())
        full += int((classes == FULL).sum())
    return skipped, full


def check_index_ranges(spec, params, label: str, frame: Frame = WHOLE) -> int:
    """Assert that kv_range() holds every key a query of its Q tile sees, and q_range() every
    query that sees a key of its KV tile, at several tile sizes; the number of tiles of
    the other side that the ranges leave out."""
    mask = _exact_mask(spec, params, frame)
    index = torch.arange(N)
    left_out = 0
    for block in (1, 16, 64, 128, 7, 50):
        for keys in (True, False):
            ranges = index_ranges(spec, params, B, H, N, N, block, keys, frame)
            seen = mask if keys else mask.transpose(2, 3)     # [B, H, this side, other side]
            pad = -N % block
            seen = F.pad(seen.to(torch.uint8), (0, 0, 0, pad)).bool()
            seen = seen.view(B, H, -1, block, N).any(dim=3)   # per tile: the other side seen
            lo, hi = ranges[..., :1], ranges[..., 1:]
            outside = seen & ((index < lo) | (index > hi))
            assert not outside.any(), (
                f"{label} {'kv' if keys else 'q'}_range, tiles of {block}: visible indices "
                f"outside the range at {outside.nonzero()[:5].tolist()}")
            if block == 64:
                # tiles of 64 on the other side wholly outside [lo, hi]
                first, last = lo.clamp(0, N - 1) // 64, hi.clamp(0, N - 1) // 64
                tiles = torch.arange(-(-N // 64))
                left_out += int(((tiles < first) | (tiles > last) | (lo > hi)).sum())
    return left_out


def check_exact_key_range(spec, params, label: str):
    """kv_range() of each single query is its first to its last visible key."""
    mask = _exact_mask(spec, params)
    ranges = index_ranges(spec, params, B, H, N, N, 1, True)
    index = torch.arange(N)
    first = torch.where(mask, index, N).amin(dim=3)
    last = torch.where(mask, index, -1).amax(dim=3)
    rows = mask.any(dim=3)
    lo, hi = ranges[..., 0].clamp(0, N - 1), ranges[..., 1].clamp(0, N - 1)
    assert torch.equal(lo[rows], first[rows]) and torch.equal(hi[rows], last[rows]), \
        f"{label}: the key range is wider than the visible keys"


def check_walks(spec, params, label: str, exact: bool = True) -> None:
    """The kernels' walks (kernels/walk.cuh, run on the host, from the rows the kernels cut
    to the mask's ranges) over every row of tiles, both directions, at the kernels' tilings
    and odd ones: each visits its tiles once, in order, with the class tile_class() gives
    them (partial where they cross the last key); it visits no tile the analysis skips and
    leaves out no tile with a visible element. `exact`: it visits every tile the analysis
    does not skip (the cut leaves out only skipped tiles: the shipped specs)."""
    mask = (_exact_mask(spec, params) if spec.mask is not None
            else torch.ones(B, H, N, N, dtype=torch.bool))
    for block_m, block_n in ((128, 128), (192, 128), (64, 128), (128, 64), (16, 16), (50, 7)):
        classes = tile_classes(spec, params, B, H, N, N, block_m, block_n)
        ragged = torch.arange(classes.shape[3]) * block_n + block_n > N
        classes = torch.where((classes == FULL) & ragged, PARTIAL, classes)
        visible = _per_tile(mask, block_m, block_n, torch.any, False)
        for keys in (True, False):
            walked = walks(spec, params, B, H, N, N, block_m, block_n, keys)
            if not keys:
                walked = walked.transpose(2, 3)
            where = f"{label} {block_m}x{block_n} {'forward' if keys else 'backward'}"
            assert not (walked == 3).any(), f"{where}: a tile visited twice or out of order"
            seen = walked >= 0
            assert torch.equal(walked[seen], classes[seen].to(torch.int8)), \
                f"{where}: classes differ at {(seen & (walked != classes)).nonzero()[:5].tolist()}"
            assert not (seen & (classes == SKIP)).any(), f"{where}: a skipped tile visited"
            missed = ~seen & visible
            assert not missed.any(), \
                f"{where}: tiles with visible elements not visited: {missed.nonzero()[:5].tolist()}"
            if exact:
                cut = ~seen & (classes != SKIP)
                assert not cut.any(), f"{where}: tiles tile_class() runs cut: {cut.nonzero()[:5].tolist()}"


def check_rendered_mask(spec, params):
    """The variant's mask() compiled for the host -- from its row and column parts where
    the mask is split (flashgen/render/mask_parts.py) -- equals the reference's mask."""
    got, want = mask_values(spec, params, B, H, N, N), _exact_mask(spec, params)
    assert torch.equal(got, want), \
        f"{spec.name}: rendered mask differs at {(got != want).nonzero()[:5].tolist()}"


@pytest.mark.nvcc
@pytest.mark.parametrize("name", [n for n in flashgen.shipped() if flashgen.load(n).mask is not None])
def test_tile_class_is_sound(name):
    spec = flashgen.load(name)
    params = example_params(spec, B, H, N, N, torch.Generator().manual_seed(0), with_defaults=True)
    skipped, full = check_tile_classes(spec, params, name)
    if name in MUST_SKIP:
        assert skipped > 0, f"{name}: no tile skipped statically"
    if name in MUST_FULL:
        assert full > 0, f"{name}: no tile proved fully visible"
    assert host_module(spec).cached     # built once, then found in the cache


@pytest.mark.nvcc
@pytest.mark.parametrize("name", [n for n in flashgen.shipped() if flashgen.load(n).mask is not None])
def test_rendered_mask_is_exact(name):
    spec = flashgen.load(name)
    params = example_params(spec, B, H, N, N, torch.Generator().manual_seed(1), with_defaults=True)
    check_rendered_mask(spec, params)


@pytest.mark.nvcc
@pytest.mark.parametrize("name", MASKED)
def test_index_ranges_are_sound(name):
    """kv_range and q_range never leave out a visible element; the masks that bound the keys
    of a query (causal, windows, prefix-LM, key padding) leave tiles out, exactly."""
    spec = flashgen.load(name)
    params = example_params(spec, B, H, N, N, torch.Generator().manual_seed(2), with_defaults=True)
    left_out = check_index_ranges(spec, params, name)
    if name in EXACT_KEY_RANGE:
        assert left_out > 0, f"{name}: the ranges leave no tile out"
        check_exact_key_range(spec, params, name)


@pytest.mark.nvcc
@pytest.mark.parametrize("name", ["sliding_window", "causal_bottom_right", "prefix_lm"])
def test_index_ranges_with_a_frame(name):
    """A shard's ranges (context parallelism: the spec sees global indices) are in the
    call's indices."""
    spec = flashgen.load(name)
    params = example_params(spec, B, H, N, N, torch.Generator().manual_seed(3), with_defaults=True)
    if "window" in params:
        params["window"] = 70
    check_index_ranges(spec, params, name, Frame(q_first=300, kv_first=180, q_extra=500,
                                                 kv_extra=400))


@pytest.mark.nvcc
@pytest.mark.parametrize("name", flashgen.shipped())
def test_walks_visit_what_the_mask_shows(name):
    spec = flashgen.load(name)
    params = example_params(spec, B, H, N, N, torch.Generator().manual_seed(5), with_defaults=True)
    check_walks(spec, params, name)


UNFOLDED = {  # masks with min / max / abs / clamp around an index; exact: the key range is too
    "band_abs": ("abs(q_idx - kv_idx) <= w", True),
    "causal_capped": ("kv_idx <= min(q_idx, w)", True),
    "prefix_or_causal": ("kv_idx < max(w, q_idx + 1)", True),
    "outside_band": ("!(abs(kv_idx - q_idx) < w)", False),
    "clamped": ("clamp(q_idx - kv_idx, 0, w) == q_idx - kv_idx", False),
}


@pytest.mark.nvcc
@pytest.mark.parametrize("name", sorted(UNFOLDED))
def test_index_ranges_through_min_max_abs(name):
    """A comparison with min, max, abs or clamp on a side unfolds into comparisons without it
    (flashgen/analysis/bounds.py): sound, and exact where the visible keys are a band."""
    mask, exact = UNFOLDED[name]
    spec = flashgen.compile(f"attention {name} {{\n  head_dim = 64\n  param w: i32\n"
                            f"  mask = {mask}\n}}\n").spec
    params = {"w": 37}
    left_out = check_index_ranges(spec, params, name)
    if exact:
        assert left_out > 0, f"{name}: the ranges leave no tile out"
        check_exact_key_range(spec, params, name)
    check_walks(spec, params, name, exact=False)   # the kernels' walks from the cut rows
