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

// The class of a listed tile (entry: sparse.cuh TileRow). A data-dependent mask's
// class comes from its list; launched without lists (never by flashgen's launcher),
// every tile runs as partial, which is always exact.
template <class V, int BM, int BN>
__device__ __forceinline__ TileMask classify_entry(const typename V::Params& p,
                                                   const BlockSparseArgs& sparse, int b, int h,
                                                   int q0, int k0, int q_len, int kv_len,
                                                   int entry) {
  if constexpr (V::kRuntimeTiles) {
    const bool partial = !sparse.mask_classes || TileRow::low_bit(entry);
    return {partial ? TileClass::kPartial : TileClass::kFull, false};
  } else {
    return classify_tile<V, BM, BN>(p, b, h, q0, k0, q_len, kv_len, TileRow::low_bit(entry));
  }
}

struct TileClassArgs {
  int batches, heads, q_len, kv_len, block_m, block_n;
  int8_t* out;  // [batches][heads][q_tiles][kv_tiles]
  template <class Reader>
  static TileClassArgs read(Reader& in) {
    TileClassArgs a;
    a.batches = in.i32();
    a.heads = in.i32();
    a.q_len = in.i32();
    a.kv_len = in.i32();
    a.block_m = in.i32();
    a.block_n = in.i32();
    a.out = in.template ptr<int8_t>();
    return a;
  }
};

// Every tile pair's class, as classify_tile gives it, for a mask whose classes depend on
// the call's tables (V::kRuntimeTiles, sparse.cuh): one warp per pair, as tile_class's
// table scans are warp-cooperative (interval.cuh range_of).
template <class V>
__global__ void __launch_bounds__(256) tile_class_kernel(const TileClassArgs a,
                                                         const typename V::Params p) {
  const int q_tiles = (a.q_len + a.block_m - 1) / a.block_m;
  const int kv_tiles = (a.kv_len + a.block_n - 1) / a.block_n;
  const int64_t pair = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (pair >= int64_t(a.batches) * a.heads * q_tiles * kv_tiles) return;  // whole warps
  const int j = int(pair % kv_tiles), i = int(pair / kv_tiles % q_tiles);
  const int h = int(pair / kv_tiles / q_tiles % a.heads), b = int(pair / kv_tiles / q_tiles / a.heads);
  const int q0 = i * a.block_m, k0 = j * a.block_n;
  const int q_hi = min(q0 + a.block_m, a.q_len) - 1, kv_hi = min(k0 + a.block_n, a.kv_len) - 1;
  int c = 1;
  if constexpr (V::kHasMask) c = V::tile_class(p, b, h, q0, q_hi, k0, kv_hi, a.q_len, a.kv_len);
  if (c == 1 && k0 + a.block_n > a.kv_len) c = 2;  // the bounds mask, as classify_tile
  if ((threadIdx.x & 31) == 0) a.out[pair] = static_cast<int8_t>(c);
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
