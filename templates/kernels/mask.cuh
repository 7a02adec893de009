// Masks in the kernels: which (Q tile, KV tile) pairs run, and which elements count.
//
// A tile pair is classified before anything is loaded. The variant's tile_class()
// (rendered by flashgen/render/tile_class.py) bounds the mask over the tile's index
// ranges by interval analysis: kSkip tiles are never loaded, kFull tiles run with no
// per-element mask work, kPartial tiles evaluate the mask at every element. Keys past
// the end of the sequence make a tile partial too (the bounds mask), and so does a
// block-sparse tile whose blocks differ (sparse.cuh).
#pragma once
#include "expr.cuh"
#include "sparse.cuh"

namespace fg {

enum class TileClass : int { kSkip = 0, kFull = 1, kPartial = 2 };

// How one tile pair is masked: its class, and whether a block-sparse layout must be
// read per element (the tile covers blocks that differ, sparse.cuh).
struct TileMask {
  TileClass cls;
  bool check_layout;
  __device__ __forceinline__ bool skip() const { return cls == TileClass::kSkip; }
  __device__ __forceinline__ bool partial() const { return cls == TileClass::kPartial; }
};

template <class V, int BM, int BN>
__device__ __forceinline__ TileMask classify_tile(const typename V::Params& p, int b, int h,
                                                  int q0, int k0, int q_len, int kv_len,
                                                  bool layout_partial = false) {
  const int q_hi = min(q0 + BM, q_len) - 1, kv_hi = min(k0 + BN, kv_len) - 1;
  TileClass c = TileClass::kFull;
  if constexpr (V::kHasMask)
    c = static_cast<TileClass>(V::tile_class(p, b, h, q0, q_hi, k0, kv_hi, q_len, kv_len));
  if (c == TileClass::kFull && (k0 + BN > kv_len || layout_partial)) c = TileClass::kPartial;
  return {c, layout_partial};
}

// Is the layout block of an accumulator fragment visible? The fragment's four elements
// (rows q, q + 8 with q % 16 < 8; columns kv, kv + 1 with kv even) lie in one block, as
// blocks are 16 x 16 or larger, so one read serves them all. True unless the tile needs
// the layout per element.
template <class V>
__device__ __forceinline__ bool fragment_block_visible(const TileMask& tile,
                                                       const BlockSparseArgs& sparse, int h,
                                                       int q, int kv, int q_len, int kv_len) {
  if constexpr (V::kHasBlockSparse) {
    if (tile.check_layout) return layout_visible<V>(sparse, h, q, kv, q_len, kv_len);
  }
  return true;
}

// Is (q, kv) of a partial tile visible? The mask, the sequence end and the fragment's
// layout block.
template <class V>
__device__ __forceinline__ bool visible_in_partial(const typename V::Params& p, bool block_visible,
                                                   int b, int h, int q, int kv, int q_len,
                                                   int kv_len) {
  if (kv >= kv_len) return false;
  if constexpr (V::kHasMask)
    if (!V::mask(p, b, h, q, kv, q_len, kv_len)) return false;
  return block_visible;
}


}  // namespace fg
