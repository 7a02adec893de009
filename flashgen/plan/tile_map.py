"""The tile map: what the kernels do with each (Q tile, KV tile) pair at given lengths.

A kernel classifies every tile pair before loading it (templates/kernels/mask.cuh,
classify_tile): skipped, run with no per-element mask (full), or run with the mask
(partial). The class comes from the variant's tile_class() -- the mask's static interval
analysis (flashgen/render/tile_class.py) -- and from two rules of the kernel: a tile that
crosses the end of the keys is partial (the bounds mask), and so is a tile whose
block-sparse blocks differ; a tile no block-sparse list names is never visited.

To report what the kernels do rather than a re-derivation, tile_class() itself runs
here: the variant's header is compiled for the host with nvcc into a small shared
library (cached like the kernels, flashgen/build/cache.py, by the hash of its sources),
whose one function fills the class grid; Params are read from the launcher's argument
arrays by the variant's own Params::read. Block-sparse lists come from
flashgen/runtime/sparse.py, which builds the kernels' lists."""
from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass, field

import torch

from ..api import KERNEL_ELEMENT
from ..build.cache import BuiltModule, build
from ..ir.nodes import AttentionSpec
from ..reference.attention import rows_evaluator, visible_rows
from ..reference.patterns import fixed_layout
from ..render.kernels import support_headers
from ..render.tile_class import mask_reads, scans_tables
from ..render.variant import render_variant
from ..runtime.arguments import WHOLE, Frame
from ..runtime.examples import example_layout, example_params
from ..runtime.sparse import tile_lists

SKIP, FULL, PARTIAL = 0, 1, 2          # fg::TileClass (templates/kernels/mask.cuh)
EXAMPLE_DENSITY = 0.25                 # of the example layout of a `layout(...)` spec
# Above this many mask elements the visible fraction is taken from evenly spaced
# query rows (about 1 s of the reference evaluator on one core).
ELEMENT_BUDGET = 1 << 28

HOST_SOURCE = r"""// The kernels' tile classification on the host (flashgen/plan/tile_map.py).
#include <cstdint>

#include <utility>

#include "kernels/walk.cuh"
#include "tile_class.cuh"
#include "variant.cuh"

// The row of candidate tiles a kernel's walk starts from: every tile of row i (a Q tile's
// K/V tiles, keys; a KV tile's Q tiles, else), cut to the mask's range as the kernels cut
// it (kernels/mask.cuh cut_to_keys, cut_to_queries)
template <class V>
fg::TileRow walk_row(const typename V::Params& p, int b, int h, int i, int keys, int block_m,
                     int block_n, int q_len, int kv_len) {
  if (keys) {
    const fg::TileRow all{nullptr, 0, (kv_len + block_n - 1) / block_n};
    return fg::cut_to_keys<V>(all, p, b, h, i * block_m, block_m, block_n, q_len, kv_len);
  }
  const fg::TileRow all{nullptr, 0, (q_len + block_m - 1) / block_m};
  return fg::cut_to_queries<V>(all, p, b, h, i * block_n, block_n, block_m, q_len, kv_len);
}

// Params::read over the launcher's argument arrays, in the order of
// flashgen/runtime/launch.py (as templates/kernels/args.cuh ArgReader reads them).
struct HostReader {
  const int64_t* ints;
  const float* floats;
  int next_int = 0, next_float = 0;
  int64_t i64() { return ints[next_int++]; }
  int i32() { return static_cast<int>(ints[next_int++]); }
  float f32() { return floats[next_float++]; }
  template <class T>
  T* ptr() { return reinterpret_cast<T*>(static_cast<intptr_t>(ints[next_int++])); }
};

// The mask's class of every pair of block_m x block_n tiles (tile_class.cuh, the rule the
// kernels use, without the bounds mask), for b < batches and h < heads:
// out[batches][heads][q_tiles][kv_tiles].
extern "C" void flashgen_tile_classes(const int64_t* ints, const float* floats, int batches,
                                      int heads, int q_len, int kv_len, int block_m,
                                      int block_n, int8_t* out) {
  using V = NAMESPACE::FramedVariant;  // frame 0: a whole call
  HostReader in{ints, floats};
  const V::Params p = V::Params::read(in);
  const int q_tiles = (q_len + block_m - 1) / block_m, kv_tiles = (kv_len + block_n - 1) / block_n;
  for (int b = 0; b < batches; ++b)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < q_tiles; ++i)
        for (int j = 0; j < kv_tiles; ++j) {
          *out++ = static_cast<int8_t>(fg::mask_tile_class<V>(p, b, h, i * block_m, j * block_n,
                                                               block_m, block_n, q_len, kv_len));
        }
}

// The mask's range of one index (flashgen/analysis/bounds.py) for each tile of `block`
// rows: keys != 0, the keys kv_range() allows each Q tile; else the queries q_range()
// allows each KV tile. out[batches][heads][tiles][2] = (lo, hi); the whole int32 range
// where the mask bounds nothing.
extern "C" void flashgen_index_ranges(const int64_t* ints, const float* floats, int batches,
                                      int heads, int q_len, int kv_len, int block, int keys,
                                      int64_t* out) {
  using V = NAMESPACE::FramedVariant;  // frame 0: a whole call
  HostReader in{ints, floats};
  const V::Params p = V::Params::read(in);
  const int len = keys ? q_len : kv_len, tiles = (len + block - 1) / block;
  for (int b = 0; b < batches; ++b)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < tiles; ++i) {
        const int lo = i * block, hi = (lo + block < len ? lo + block : len) - 1;
        const fg::Iv range = keys ? fg::mask_kv_range<V>(p, b, h, lo, hi, q_len, kv_len)
                                  : fg::mask_q_range<V>(p, b, h, lo, hi, q_len, kv_len);
        *out++ = range.lo;
        *out++ = range.hi;
      }
}

// The kernels' walks (kernels/walk.cuh TileWalk, with the span questions they ask): the
// forward's over each Q tile's K/V tiles (keys != 0: out[batches][heads][q_tiles][kv_tiles])
// or the backward's over each KV tile's Q tiles (out[batches][heads][kv_tiles][q_tiles]),
// with the rows the kernels start from (walk_row): -1 where the walk does not visit the
// pair, else the class it found (kernel_tile_class: the bounds mask included); 3 where it
// visits a tile twice or out of order.
extern "C" void flashgen_walks(const int64_t* ints, const float* floats, int batches, int heads,
                               int q_len, int kv_len, int block_m, int block_n, int keys,
                               int8_t* out) {
  using V = NAMESPACE::FramedVariant;  // frame 0: a whole call
  HostReader in{ints, floats};
  const V::Params p = V::Params::read(in);
  const int q_tiles = (q_len + block_m - 1) / block_m, kv_tiles = (kv_len + block_n - 1) / block_n;
  const int rows = keys ? q_tiles : kv_tiles, cols = keys ? kv_tiles : q_tiles;
  for (int b = 0; b < batches; ++b)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < rows; ++i, out += cols) {
        for (int j = 0; j < cols; ++j) out[j] = -1;
        // (q0, k0) of the pair of this row's tile and column tile t
        auto at = [&](int t) { return keys ? std::pair<int, int>{i * block_m, t * block_n}
                                           : std::pair<int, int>{t * block_m, i * block_n}; };
        const fg::TileRow row = walk_row<V>(p, b, h, i, keys, block_m, block_n, q_len, kv_len);
        auto classify = [&](int, int entry) {
          const auto [q0, k0] = at(fg::TileRow::tile_of(entry));
          return fg::TileMask{static_cast<fg::TileClass>(fg::kernel_tile_class<V>(
                                  p, b, h, q0, k0, block_m, block_n, q_len, kv_len)), false};
        };
        auto span_skip = [&](int, int tile, int tiles) {  // as the kernels ask
          return keys ? fg::span_skipped<V>(p, b, h, i * block_m, block_m, tile * block_n,
                                            tiles * block_n, q_len, kv_len)
                      : fg::span_skipped<V>(p, b, h, tile * block_m, tiles * block_m,
                                            i * block_n, block_n, q_len, kv_len);
        };
        int last = -1;
        for (auto walk = fg::tile_walk([&](int) { return row; }, classify, 1, span_skip);
             !walk.done(); walk.advance()) {
          const int t = fg::TileRow::tile_of(walk.entry);
          out[t] = t <= last ? 3 : static_cast<int8_t>(walk.mask.cls);
          last = t;
        }
      }
}

// mask() at every element, as the kernels' partial tiles compute it (from the row and
// column parts where the mask is split, variant.cuh): out[batches][heads][q_len][kv_len].
extern "C" void flashgen_mask_values(const int64_t* ints, const float* floats, int batches,
                                     int heads, int q_len, int kv_len, int8_t* out) {
  using V = NAMESPACE::FramedVariant;  // frame 0: a whole call
  HostReader in{ints, floats};
  const V::Params p = V::Params::read(in);
  for (int b = 0; b < batches; ++b)
    for (int h = 0; h < heads; ++h)
      for (int q = 0; q < q_len; ++q)
        for (int kv = 0; kv < kv_len; ++kv) {
          *out++ = fg::mask_or_true<V>(p, b, h, q, kv, q_len, kv_len);
        }
}
"""


# the kernels' headers of the walk (walk.cuh and what it includes); the others' edits need
# no rebuild here
WALK_HEADERS = ("kernels/walk.cuh", "kernels/mask.cuh", "kernels/sparse.cuh")


def host_sources(spec: AttentionSpec) -> dict[str, str]:
    """The host library's sources: the variant header, the common headers it includes, the
    kernels' walk headers, and the grid functions."""
    headers = {name: text for name, text in support_headers().items()
               if "/" not in name or name in WALK_HEADERS}
    return {**headers, "variant.cuh": render_variant(spec, f"<{spec.name}>"),
            "tile_classes.cu": HOST_SOURCE.replace("NAMESPACE", f"fg_{spec.name}")}


def host_module(spec: AttentionSpec) -> BuiltModule:
    """The spec's host library, from the build cache or built now (needs nvcc)."""
    # host code only; the build wants an arch, and the device pass has nothing to compile
    return build(host_sources(spec), name=f"tile_class_{spec.name}", arch="sm_80")


# The host library's functions (HOST_SOURCE): each takes the packed ints and floats, then
# this many int arguments, then the output pointer.
_HOST_FUNCTIONS = {"flashgen_tile_classes": 6, "flashgen_mask_values": 4, "flashgen_walks": 7,
                   "flashgen_index_ranges": 6}


def _host_library(spec: AttentionSpec) -> ctypes.CDLL:
    library = host_module(spec).library()
    for name, int_args in _HOST_FUNCTIONS.items():
        function = getattr(library, name)
        function.restype = None
        function.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float),
                             *[ctypes.c_int] * int_args, ctypes.c_void_p]
    return library


def _run_host(spec: AttentionSpec, params: dict, frame: Frame, function: str, *args: int,
              out: torch.Tensor) -> torch.Tensor:
    """Call one of the host library's functions on the call's parameters, into `out`."""
    ints, floats, _kept_alive = _pack_params(spec, params, frame)
    getattr(_host_library(spec), function)((ctypes.c_int64 * max(1, len(ints)))(*ints),
                                           (ctypes.c_float * max(1, len(floats)))(*floats),
                                           *args, out.data_ptr())
    return out


def _pack_params(spec: AttentionSpec, params: dict, frame: Frame = WHOLE
                 ) -> tuple[list[int], list[float], list]:
    """The call's frame and the spec's parameters as the launchers pass them
    (flashgen/runtime/launch.py): a tensor as pointer, sizes, strides; an i32/bool scalar
    in the ints, an f32 one in the floats. Also the converted tensors, which must outlive
    the call."""
    ints, floats, tensors = frame.ints(), [], []
    for p in spec.params:
        value = params[p.name]
        if p.is_tensor:
            t = torch.as_tensor(value).to("cpu", KERNEL_ELEMENT[p.element]).contiguous()
            tensors.append(t)
            ints += [t.data_ptr(), *t.shape, *t.stride()]
        elif p.element == "f32":
            floats.append(float(value))
        else:
            ints.append(int(value))
    return ints, floats, tensors


def tile_classes(spec: AttentionSpec, params: dict, batches: int, heads: int, q_len: int,
                 kv_len: int, block_m: int, block_n: int, frame: Frame = WHOLE) -> torch.Tensor:
    """What tile_class() says of every (Q tile, KV tile) pair: int8 [batches, heads,
    q_tiles, kv_tiles] of SKIP / FULL / PARTIAL, from the mask alone (no bounds or
    block-sparse rules), of a call of q_len x kv_len rows placed by `frame`. Compiles the
    spec's host library on first use (needs nvcc)."""
    q_tiles, kv_tiles = -(-q_len // block_m), -(-kv_len // block_n)
    if spec.mask is None:
        return torch.full((batches, heads, q_tiles, kv_tiles), FULL, dtype=torch.int8)
    return _run_host(spec, params, frame, "flashgen_tile_classes", batches, heads, q_len, kv_len,
                     block_m, block_n,
                     out=torch.empty(batches, heads, q_tiles, kv_tiles, dtype=torch.int8))


def index_ranges(spec: AttentionSpec, params: dict, batches: int, heads: int, q_len: int,
                  kv_len: int, block: int, keys: bool, frame: Frame = WHOLE) -> torch.Tensor:
    """What kv_range() (keys: for each Q tile of `block` rows) or q_range() (for each KV
    tile) says: int64 [batches, heads, tiles, 2] of (lo, hi), in the call's indices, not
    clipped to the sequence; (INT32_MIN, INT32_MAX) where the mask bounds nothing."""
    tiles = -(-(q_len if keys else kv_len) // block)
    if spec.mask is None:
        out = torch.empty(batches, heads, tiles, 2, dtype=torch.int64)
        out[..., 0], out[..., 1] = -2**31, 2**31 - 1
        return out
    return _run_host(spec, params, frame, "flashgen_index_ranges", batches, heads, q_len, kv_len,
                     block, int(keys), out=torch.empty(batches, heads, tiles, 2, dtype=torch.int64))


def outside_key_range(spec: AttentionSpec, params: dict, batches: int, heads: int, q_len: int,
                      kv_len: int, block_m: int, block_n: int) -> torch.Tensor:
    """bool [batches, heads, q_tiles, kv_tiles]: the KV tiles that hold no key of their Q
    tile's kv_range() in [0, kv_len), which a forward kernel's walk leaves out (trim_row)."""
    ranges = index_ranges(spec, params, batches, heads, q_len, kv_len, block_m, True)
    lo, hi = ranges[..., :1].clamp(min=0), ranges[..., 1:].clamp(max=kv_len - 1)
    first = torch.arange(-(-kv_len // block_n)) * block_n
    return (lo > hi) | (first + block_n - 1 < lo) | (first > hi)


def walks(spec: AttentionSpec, params: dict, batches: int, heads: int, q_len: int, kv_len: int,
          block_m: int, block_n: int, keys: bool, frame: Frame = WHOLE) -> torch.Tensor:
    """What the kernels' walks visit (kernels/walk.cuh, run on the host): keys, the
    forward's over each Q tile's K/V tiles, int8 [batches, heads, q_tiles, kv_tiles]; else
    the backward's over each KV tile's Q tiles, [batches, heads, kv_tiles, q_tiles]. -1
    where a pair is not visited, else the class the walk found (FULL / PARTIAL, the bounds
    mask included); 3 where a tile is visited twice or out of order. Rows as a dense spec's
    (no block-sparse or data-dependent lists: those rows are the lists)."""
    q_tiles, kv_tiles = -(-q_len // block_m), -(-kv_len // block_n)
    shape = (q_tiles, kv_tiles) if keys else (kv_tiles, q_tiles)
    return _run_host(spec, params, frame, "flashgen_walks", batches, heads, q_len, kv_len, block_m,
                     block_n, int(keys), out=torch.empty(batches, heads, *shape, dtype=torch.int8))


def mask_values(spec: AttentionSpec, params: dict, batches: int, heads: int, q_len: int,
                kv_len: int, frame: Frame = WHOLE) -> torch.Tensor:
    """The variant's compiled mask() at every element: bool [batches, heads, q_len, kv_len]
    (a check of the rendered mask against the reference; needs nvcc)."""
    return _run_host(spec, params, frame, "flashgen_mask_values", batches, heads, q_len, kv_len,
                     out=torch.empty(batches, heads, q_len, kv_len, dtype=torch.int8)).bool()


@dataclass(frozen=True)
class TileGrid:
    """The tile pairs of one tile size, as the kernels treat them."""
    block_m: int
    block_n: int
    classes: torch.Tensor      # int8 [batches, heads, q_tiles, kv_tiles]: SKIP, FULL, PARTIAL

    @property
    def q_tiles(self) -> int:
        return self.classes.shape[2]

    @property
    def kv_tiles(self) -> int:
        return self.classes.shape[3]

    def counts(self) -> dict[str, int]:
        """Tile pairs per class, over every (batch, head) of the grid."""
        return {name: int((self.classes == c).sum())
                for name, c in (("skip", SKIP), ("full", FULL), ("partial", PARTIAL))}

    def visited(self) -> torch.Tensor:
        return self.classes != SKIP

    def describe(self) -> list[str]:
        """The picture and the counts (with percentages of all pairs)."""
        picture, (per_row, per_column) = self.picture()
        counts = self.counts()
        total = sum(counts.values())
        scale = ("one character per tile pair" if per_row == per_column == 1 else
                 f"one character per {per_row} x {per_column} tile pairs")
        return [f"{self.q_tiles} Q tiles x {self.kv_tiles} KV tiles, {scale}:",
                *(f"  {line}" for line in picture),
                "  " + ", ".join(f"{name} {n} ({100 * n / total:.1f} %)"
                                 for name, n in counts.items())]

    def picture(self, max_columns: int = 64, max_rows: int = 24) -> tuple[list[str], tuple[int, int]]:
        """The first (batch, head)'s grid as text -- `.` skipped, `#` full, `+` partial (or a
        character whose tiles differ) -- and the (rows, columns) of tiles per character.
        Characters are about twice as tall as wide, so a character spans about twice as
        many elements down as across and the picture keeps the matrix's shape. Tiles per
        character are powers of two, so that characters line up with block-sparse blocks."""
        grid = self.classes[0, 0]
        rows_limit = -(-self.q_tiles * self.block_m // (2 * self.block_n * max_rows))
        per_column = 1 << (max(-(-self.kv_tiles // max_columns), rows_limit) - 1).bit_length()
        per_row = max(1, round(2 * per_column * self.block_n / self.block_m))
        per_row = max(per_row, -(-self.q_tiles // max_rows))
        lines = []
        for i in range(0, self.q_tiles, per_row):
            line = []
            for j in range(0, self.kv_tiles, per_column):
                cell = grid[i:i + per_row, j:j + per_column]
                if bool((cell == SKIP).all()):
                    line.append(".")
                elif bool((cell == FULL).all()):
                    line.append("#")
                else:
                    line.append("+")
            lines.append("".join(line))
        return lines, (per_row, per_column)


@dataclass
class TileMap:
    """One call's tile pairs: a spec at (q_len, kv_len), with example parameters drawn for
    (batch, heads). Grids cover the (batch, head) pairs the mask can tell apart: every
    batch where it reads b, else one (`batches`); every head where it reads h or the
    layout differs per head, else one (`grid_heads`)."""
    spec: AttentionSpec
    q_len: int
    kv_len: int
    batch: int
    heads: int
    params: dict               # parameter values (example values unless given)
    layout: torch.Tensor | None   # bool [heads or 1, q_blocks, kv_blocks] of block-sparse specs
    _grids: dict = field(default_factory=dict, repr=False)

    @property
    def batches(self) -> int:
        return self.batch if mask_reads(self.spec, "b") else 1

    @property
    def grid_heads(self) -> int:
        per_head_layout = self.layout is not None and self.layout.shape[0] > 1
        return self.heads if mask_reads(self.spec, "h") or per_head_layout else 1

    def grid(self, block_m: int, block_n: int) -> TileGrid:
        """The tile pairs at block_m x block_n, classified as classify_tile does."""
        key = (block_m, block_n)
        if key not in self._grids:
            self._grids[key] = TileGrid(block_m, block_n, self._classify(block_m, block_n))
        return self._grids[key]

    def _classify(self, block_m: int, block_n: int) -> torch.Tensor:
        classes = tile_classes(self.spec, self.params, self.batches, self.grid_heads,
                               self.q_len, self.kv_len, block_m, block_n)
        # a tile reaching past the last key masks the keys beyond it: partial
        ragged = torch.arange(classes.shape[3]) * block_n + block_n > self.kv_len
        layout_partial = torch.zeros_like(ragged)
        listed = None
        if self.layout is not None:
            listed, layout_partial = _listed_tiles(self.layout, self.spec.block_sparse, block_m,
                                                   block_n, self.q_len, self.kv_len)
        classes = torch.where((classes == FULL) & (ragged | layout_partial), PARTIAL, classes)
        if listed is not None:
            classes = torch.where(listed, classes, SKIP)
        elif not scans_tables(self.spec):
            # a row without a list is cut to the mask's key range (kernels/mask.cuh
            # trim_row): the forward never visits the tiles outside it
            classes = torch.where(outside_key_range(self.spec, self.params, self.batches,
                                                    self.grid_heads, self.q_len, self.kv_len,
                                                    block_m, block_n), SKIP, classes)
        return classes.to(torch.int8)

    def describe_inputs(self) -> list[str]:
        """Where the parameters and the block layout come from, and their values in short."""
        lines = []
        for p in self.spec.params:
            value = self.params[p.name]
            if isinstance(value, torch.Tensor):
                shown = (str(value.tolist()) if value.numel() <= 8 else
                         f"values {value.min().item():g}..{value.max().item():g}")
                text = f"{p.name}: {p.element}[{', '.join(map(str, value.shape))}] {shown}"
            else:
                text = f"{p.name} = {value}" + (" (its default)" if value == p.default else "")
            lines.append(text)
        if lines:
            lines.insert(0, "parameters from flashgen.runtime.examples.example_params "
                            "(the defaults where the spec has them):")
        bs = self.spec.block_sparse
        if bs is not None:
            _, q_blocks, kv_blocks = self.layout.shape
            what = (f"an example layout at {100 * EXAMPLE_DENSITY:.0f} % density"
                    if bs.pattern == "layout" else f"the {bs.pattern} pattern")
            lines.append(f"block layout: {what}, {q_blocks} x {kv_blocks} blocks of "
                         f"{bs.block_q} x {bs.block_k}, {100 * self.layout.float().mean():.1f} % "
                         "of them visible")
        return lines

    @functools.cached_property
    def visible(self) -> tuple[float, int]:
        """(fraction of the elements that are visible, query-row step it was evaluated at:
        1 = every row), from the exact mask and layout, evaluated with the reference
        evaluator a chunk of query rows at a time."""
        spec, nq, nk = self.spec, self.q_len, self.kv_len
        b, h = self.batches, self.grid_heads
        if spec.mask is None and self.layout is None:
            return 1.0, 1
        step = max(1, math.ceil(b * h * nq * nk / ELEMENT_BUDGET))
        rows = torch.arange(0, nq, step, dtype=torch.int32)
        chunk = max(1, (1 << 24) // (b * h * nk))
        seen = total = 0
        for start in range(0, len(rows), chunk):
            q_idx = rows[start:start + chunk]
            shape = (b, h, len(q_idx), nk)
            evaluator = rows_evaluator(spec, self.params, b, h, q_idx, nq, nk, "cpu")
            visible = visible_rows(spec, self.layout, evaluator, q_idx, nk)
            seen += int(visible.expand(shape).sum())
            total += math.prod(shape)
        return seen / total, step


def _listed_tiles(layout: torch.Tensor, bs, block_m: int, block_n: int, q_len: int, kv_len: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(listed, layout partial), bool [heads, q_tiles, kv_tiles]: the tiles the kernels'
    block-sparse lists name, and those flagged to read the layout per element. The lists
    by Q tile (forward) and by KV tile (backward) name the same tiles; these are the
    forward's, decoded (entry = 2 * tile + partial)."""
    count, entries, _, _ = tile_lists(layout, bs.block_q, bs.block_k, block_m, block_n,
                                      q_len, kv_len)
    in_list = torch.arange(entries.shape[-1]) < count.unsqueeze(-1)
    tile = (entries >> 1).long()
    listed = torch.zeros_like(in_list).scatter_(-1, tile, in_list)
    partial = torch.zeros_like(in_list).scatter_(-1, tile, in_list & (entries & 1).bool())
    return listed, partial


def example_values(spec: AttentionSpec, batch: int, heads: int, q_len: int, kv_len: int,
                   seed: int = 0) -> tuple[dict, torch.Tensor | None]:
    """(parameters, layout) explain uses: flashgen.runtime.examples.example_params drawn
    with `seed` (a parameter with a default takes its default, as in a call that leaves
    it out), and the block layout: a built-in pattern's, or an example at 25 % density
    for a `layout(...)` spec."""
    generator = torch.Generator().manual_seed(seed)
    params = {p.name: p.default for p in spec.params if p.default is not None}
    params.update(example_params(spec, batch, heads, q_len, kv_len, generator))
    layout = None
    bs = spec.block_sparse
    if bs is not None:
        layout = (example_layout(spec, 1, q_len, kv_len, generator, density=EXAMPLE_DENSITY)
                  if bs.pattern == "layout" else fixed_layout(bs, q_len, kv_len))
    return params, layout


def tile_map(spec: AttentionSpec, q_len: int, kv_len: int, batch: int = 1, heads: int = 1,
             params: dict | None = None, layout: torch.Tensor | None = None) -> TileMap:
    """The tile map of a call; parameters and layout default to example_values()."""
    if params is None or (layout is None and spec.block_sparse is not None):
        example_params_, example_layout_ = example_values(spec, batch, heads, q_len, kv_len)
        params = example_params_ if params is None else params
        layout = example_layout_ if layout is None else layout
    return TileMap(spec, q_len, kv_len, batch, heads, params, layout)
