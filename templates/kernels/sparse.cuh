// Block-sparse attention in the kernels: which tiles a CTA visits.
//
// A layout (a runtime tensor, or a built-in pattern) marks blocks of block_q x block_k
// elements visible or not. The host turns it, once per layout, into tile lists at the
// kernels' own tile sizes (flashgen/runtime/sparse.py): for each row of tiles, the
// column tiles that hold any visible block, ascending, each stored as
//   2 * tile + (1 if only some of the tile's blocks are visible, else 0).
// A CTA walks its row's list instead of every tile, so zero blocks are never loaded.
// Both sizes are powers of two, so a tile lies inside one block (the low bit is 0) or
// covers whole blocks; only the latter can need the per-element layout check below.
// Dense specs walk all tiles through the same TileRow, with no list.
//
// The same lists carry a data-dependent mask's tile classes (V::kRuntimeTiles: its
// tile_class() scans tables such as doc[b, q_idx]): the host classifies every tile
// pair on the GPU (mask.cuh tile_class_kernel) and lists the tiles that are not skipped,
// per batch entry where the mask reads b; the low bit then marks a partial tile
// (flashgen/runtime/mask_tiles.py). This is FlexAttention's BlockMask, derived from the
// spec instead of written by the user.
#pragma once
#include <cstdint>

#include "expr.cuh"

namespace fg {

// Tile lists of one layout in one direction: rows are Q tiles (forward, deterministic
// dQ) or KV tiles (backward), columns the other.
struct TileLists {
  const int* count;   // [batches][heads][rows]; null: no list, every tile
  const int* tiles;   // [batches][heads][rows][cols], the first count[...] entries used
  int batches, heads, rows, cols;
};

struct BlockSparseArgs {
  const bool* layout;        // [heads][q_blocks][kv_blocks]; null for a dense spec
  int heads, q_blocks, kv_blocks;
  TileLists by_q, by_kv;
  int mask_classes;          // 1: the lists hold the mask's tile classes (see above)
  template <class Reader>
  static BlockSparseArgs read(Reader& in) {
    BlockSparseArgs s;
    s.layout = in.template ptr<const bool>();
    s.heads = in.i32();
    s.q_blocks = in.i32();
    s.kv_blocks = in.i32();
    for (TileLists* l : {&s.by_q, &s.by_kv}) {
      l->count = in.template ptr<const int>();
      l->tiles = in.template ptr<const int>();
      l->batches = in.i32();
      l->heads = in.i32();
      l->rows = in.i32();
      l->cols = in.i32();
    }
    s.mask_classes = in.i32();
    return s;
  }
};

// The candidate tiles of one row: positions [begin, end) of its list, or tiles
// [begin, end) of a dense row (every tile 0..n-1, or the part a split-KV CTA or the
// mask's index range leaves: mask.cuh trim_row). An entry is 2 * tile + (layout check
// needed); a dense row's entry at position i is 2 * i. Positions are absolute, so that a
// walk keeps its position and the end, as many registers as with a count.
struct TileRow {
  const int* list;  // null: dense
  int begin, end;
  FG_HD int size() const { return end - begin; }
  FG_HD int entry(int i) const { return list ? list[i] : 2 * i; }
  // Part `part` of `parts` of the row's candidates, contiguous and as even as the count
  // allows (split-KV decoding: each part is one CTA's, combined by lse afterwards).
  FG_HD TileRow split(int part, int parts) const {
    const int64_t n = end - begin;
    return {list, begin + int(n * part / parts), begin + int(n * (part + 1) / parts)};
  }
  static FG_HD int tile_of(int entry) { return entry >> 1; }
  // block-sparse lists: only some blocks of the tile are visible, check the layout per
  // element; mask-class lists: the tile is partial
  static FG_HD bool low_bit(int entry) { return entry & 1; }
};

template <class V>
FG_HD TileRow tile_row(const TileLists& l, int b, int h, int row, int all_tiles) {
  if constexpr (V::kHasBlockSparse || V::kRuntimeTiles) {
    if (l.count != nullptr) {
      const int64_t at =
          (int64_t(l.batches == 1 ? 0 : b) * l.heads + (l.heads == 1 ? 0 : h)) * l.rows + row;
      const int* list = l.tiles + at * l.cols;
      // A packed (varlen) sequence shorter than the longest, which the lists were built
      // for, stops at its own last tile (entries ascend).
      int count = l.count[at];
      while (count > 0 && TileRow::tile_of(list[count - 1]) >= all_tiles) --count;
      return {list, 0, count};
    }
  }
  return {nullptr, 0, all_tiles};
}

// Is the block holding (q, kv) visible? Asked only in tiles whose blocks differ.
template <class V>
__device__ __forceinline__ bool layout_visible(const BlockSparseArgs& s, int h, int q, int kv,
                                               int q_len, int kv_len) {
  if constexpr (V::kHasBlockSparse) {
    const int qb = min(q, q_len - 1) / V::kBlockQ, kb = min(kv, kv_len - 1) / V::kBlockK;
    return s.layout[(int64_t(s.heads == 1 ? 0 : h) * s.q_blocks + qb) * s.kv_blocks + kb];
  } else {
    return true;
  }
}

}  // namespace fg
