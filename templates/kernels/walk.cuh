// Which tiles a CTA visits, in order: TileWalk enumerates candidate tiles (all, or a
// block-sparse list: sparse.cuh) minus those the mask analysis skips (mask.cuh). The
// forward's K/V stream walks a Q tile's K/V tiles with it (schedule.cuh), the backward
// its KV tile's Q tiles. Host and device: flashgen/plan/tile_map.py runs the same walk
// on the CPU, where the tests compare what it visits with the mask.
#pragma once
#include "expr.cuh"
#include "mask.cuh"

namespace fg {

// Walks, in order, the tiles of `rows` rows of candidate tiles (the forward pass: one
// row; the backward: one per query head of the GQA group) that `classify` does not
// skip. The entry after the current one is read when the walk moves, a whole tile of
// math before it is needed, so the list's memory latency stays off the path from one
// tile's barrier to the next tile's cp.async (measured: 1 % of the sparse forward).
//
// Skipped tiles still cost a classification each, on the walker's path. A row without a
// list (a dense row: position i is tile i) comes cut to the tiles the mask's comparisons
// leave (mask.cuh trim_row: a sliding window's Q tile at N = 8192 starts at the first of
// its 9 visible tiles instead of classifying the 55 before them). Inside it,
// `span_skip(r, tile, kSpanTiles)` asks the mask's interval analysis about kSpanTiles
// tiles at once, for the masks whose skipped tiles the cut leaves (a document's, a
// prefix and a window apart): a span it calls skip is skipped whole. The analysis is
// sound over any range, so a skipped span holds no visible element; a span it cannot
// decide is walked tile by tile.
constexpr int kSpanTiles = 8;

// The default span_skip: none. Both kernels' walks pass span_skipped (mask.cuh), which
// itself answers no for data-dependent masks; rows with a list (block-sparse) never ask.
struct NoSpanSkip {
  FG_HD bool operator()(int, int, int) const { return false; }
};

template <class RowOf, class Classify, class SpanSkip = NoSpanSkip>
struct TileWalk {
  RowOf row_of;        // r -> TileRow
  Classify classify;   // (r, entry) -> TileMask
  int rows;
  SpanSkip span_skip;  // (r, first tile, tiles) -> every tile of the span is skipped
  int r = 0, pos = -1, entry = 0;  // the current tile (pos: in row); r == rows at the end
  TileMask mask{};
  TileRow row{};
  int ahead = 0;                  // row.entry(pos + 1), read early

  FG_HD bool done() const { return r >= rows; }
  FG_HD void start() {
    r = 0;
    row = row_of(0);
    pos = row.begin - 1;
    ahead = row.size() > 0 ? row.entry(row.begin) : 0;
    advance();
  }
  FG_HD void advance() {
    int p = pos + 1, e = ahead;
    for (;;) {
      while (p < row.end) {
        if (row.list == nullptr && p % kSpanTiles == 0 && p + kSpanTiles <= row.end &&
            span_skip(r, p, kSpanTiles)) {
          p += kSpanTiles;
          e = p < row.end ? row.entry(p) : 0;
          continue;
        }
        mask = classify(r, e);
        if (!mask.skip()) {
          pos = p;
          entry = e;
          ahead = p + 1 < row.end ? row.entry(p + 1) : 0;
          return;
        }
        ++p;
        e = p < row.end ? row.entry(p) : 0;
      }
      if (++r >= rows) return;
      row = row_of(r);
      p = row.begin;
      e = row.size() > 0 ? row.entry(p) : 0;
    }
  }
};

template <class RowOf, class Classify, class SpanSkip = NoSpanSkip>
FG_HD TileWalk<RowOf, Classify, SpanSkip> tile_walk(
    RowOf row_of, Classify classify, int rows, SpanSkip span_skip = {}) {
  TileWalk<RowOf, Classify, SpanSkip> walk{row_of, classify, rows, span_skip};
  walk.start();
  return walk;
}

}  // namespace fg
