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
#include "tile_class.cuh"

namespace fg {

enum class TileClass : int { kSkip = 0, kFull = 1, kPartial = 2 };

// How one tile pair is masked: its class, and whether a block-sparse layout must be
// read per element (the tile covers blocks that differ, sparse.cuh).
struct TileMask {
  TileClass cls;
  bool check_layout;
  FG_HD bool skip() const { return cls == TileClass::kSkip; }
  FG_HD bool partial() const { return cls == TileClass::kPartial; }
};

template <class V, int BM, int BN>
FG_HD TileMask classify_tile(const typename V::Params& p, int b, int h, int q0, int k0,
                             int q_len, int kv_len, bool layout_partial = false) {
  TileClass c = static_cast<TileClass>(kernel_tile_class<V>(p, b, h, q0, k0, BM, BN, q_len, kv_len));
  if (c == TileClass::kFull && layout_partial) c = TileClass::kPartial;
  return {c, layout_partial};
}

// A row without a list (every tile of the row: sparse.cuh tile_row), cut to the tiles of
// `tile` indices that hold an index of `range` in [0, len): the mask's kv_range for a Q
// tile's row of K/V tiles, or its q_range for a KV tile's row of Q tiles (tile_class.cuh,
// the mask's comparisons solved for the index, flashgen/analysis/bounds.py). The walk
// then neither loads nor classifies the tiles outside: a sliding window's Q tile at
// N = 8192 starts at its first visible tile instead of classifying the 55 before it,
// span by span, in the producer and in every consumer thread (PERF.md). A listed row
// (block-sparse, or data-dependent tile classes) is left as it is.
FG_HD TileRow trim_row(TileRow row, Iv range, int tile, int len) {
  if (row.list != nullptr) return row;
  // clipped to [0, len - 1] in 64 bits, then 32 (tile indices are non-negative ints)
  const int lo = int(range.lo > 0 ? range.lo : 0);
  const int hi = int(range.hi < len - 1 ? range.hi : len - 1);
  const int first = lo / tile, last = hi / tile;
  const int begin = row.begin > first ? row.begin : first;
  const int end = lo > hi ? begin : (row.end < last + 1 ? row.end : last + 1);
  return {nullptr, begin, end > begin ? end : begin};
}

// The row of K/V tiles (of `tile` keys) of the query rows [q0, q0 + rows), cut to the keys
// the mask's comparisons leave them (the forward, the deterministic dQ pass; the host's
// walk in flashgen/plan/tile_map.py), and the row of Q tiles (of `tile` queries) of the
// keys [k0, k0 + cols), cut to the queries that may see them (the backward)
template <class V>
FG_HD TileRow cut_to_keys(TileRow row, const typename V::Params& p, int b, int h, int q0, int rows,
                          int tile, int q_len, int kv_len) {
  if constexpr (V::kKvRange) {
    const int q_hi = (q0 + rows < q_len ? q0 + rows : q_len) - 1;
    return trim_row(row, mask_kv_range<V>(p, b, h, q0, q_hi, q_len, kv_len), tile, kv_len);
  }
  return row;
}
template <class V>
FG_HD TileRow cut_to_queries(TileRow row, const typename V::Params& p, int b, int h, int k0,
                             int cols, int tile, int q_len, int kv_len) {
  if constexpr (V::kQRange) {
    const int k_hi = (k0 + cols < kv_len ? k0 + cols : kv_len) - 1;
    return trim_row(row, mask_q_range<V>(p, b, h, k0, k_hi, q_len, kv_len), tile, q_len);
  }
  return row;
}

// Does the mask skip every tile of [q0, q0 + q_span) x [k0, k0 + k_span), several tiles
// along one side (TileWalk's spans, walk.cuh)? Only a static mask can say so: a
// data-dependent one's classes come from its lists, and a spec without a mask skips nothing.
template <class V>
FG_HD bool span_skipped(const typename V::Params& p, int b, int h, int q0, int q_span, int k0,
                        int k_span, int q_len, int kv_len) {
  if constexpr (V::kHasMask && !V::kRuntimeTiles) {
    return mask_tile_class<V>(p, b, h, q0, k0, q_span, k_span, q_len, kv_len) == 0;
  } else {
    return false;
  }
}

// The class of a listed tile (entry: sparse.cuh TileRow). A data-dependent mask's
// class comes from its list; launched without lists (never by flashgen's launcher),
// every tile runs as partial, which is always exact.
template <class V, int BM, int BN>
FG_HD TileMask classify_entry(const typename V::Params& p, const BlockSparseArgs& sparse,
                              int b, int h, int q0, int k0, int q_len, int kv_len, int entry) {
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
  // varlen: [batches + 1] first rows of each sequence (args.cuh Shape), or null; then
  // q_len / kv_len are the longest sequence's and each sequence is classified at its own
  const int* cu_q;
  const int* cu_k;
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
    a.cu_q = in.template ptr<const int>();
    a.cu_k = in.template ptr<const int>();
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
  int q_len = a.q_len, kv_len = a.kv_len;
  if (a.cu_q) {
    q_len = a.cu_q[b + 1] - a.cu_q[b];
    kv_len = a.cu_k[b + 1] - a.cu_k[b];
  }
  const bool inside = i * a.block_m < q_len && j * a.block_n < kv_len;
  const int c = inside ? kernel_tile_class<V>(p, b, h, i * a.block_m, j * a.block_n, a.block_m,
                                              a.block_n, q_len, kv_len)
                       : 0;
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

// The mask split into what varies with the row alone, the column alone, and the rest
// (variant.cuh MaskRow / MaskCol / mask_at, where V::kSplitMask; mask_parts.py says
// which parts). Without a split the row and column parts are empty and the mask runs as
// written.
template <class V, bool = V::kSplitMask>
struct MaskSplit {
  struct Row {};
  struct Col {};
  static FG_HD Row row(const typename V::Params&, int, int, int, int, int) { return {}; }
  static FG_HD Col col(const typename V::Params&, int, int, int, int, int) { return {}; }
  static FG_HD bool at(const typename V::Params& p, const Row&, const Col&, int b, int h, int q,
                       int kv, int q_len, int kv_len) {
    if constexpr (V::kHasMask) return V::mask(p, b, h, q, kv, q_len, kv_len);
    return true;
  }
};

template <class V>
struct MaskSplit<V, true> {
  using Row = typename V::MaskRow;
  using Col = typename V::MaskCol;
  static FG_HD Row row(const typename V::Params& p, int b, int h, int q, int q_len, int kv_len) {
    return V::mask_row(p, b, h, q, q_len, kv_len);
  }
  static FG_HD Col col(const typename V::Params& p, int b, int h, int kv, int q_len, int kv_len) {
    return V::mask_col(p, b, h, kv, q_len, kv_len);
  }
  static FG_HD bool at(const typename V::Params& p, const Row& row, const Col& col, int b, int h,
                       int q, int kv, int q_len, int kv_len) {
    return V::mask_at(p, row, col, b, h, q, kv, q_len, kv_len);
  }
};

// The mask over a warp's MT x NT accumulator fragments of a partial tile. The row and
// column parts are computed once per row and once per column the thread holds (rows
// q0 + 16 mt + 8 half, columns kv0 + 8 nt + j, from the thread's first row q0 and column
// kv0), not at each of its 4 MT NT elements: a document mask's two table reads per
// element, each behind a short-circuit branch, made its partial tiles cost several full
// ones (PERF.md, third session).
template <class V, int MT, int NT>
struct FragmentMask {
  using Split = MaskSplit<V>;
  typename Split::Row rows[MT][2];
  typename Split::Col cols[NT][2];

  __device__ __forceinline__ FragmentMask(const typename V::Params& p, int b, int h, int q0,
                                          int kv0, int q_len, int kv_len) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        rows[mt][half] = Split::row(p, b, h, q0 + 16 * mt + 8 * half, q_len, kv_len);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) cols[nt][j] = Split::col(p, b, h, kv0 + 8 * nt + j, q_len, kv_len);
  }

  // Is element i of fragment (mt, nt) visible (i: rows q, q, q + 8, q + 8 and columns
  // kv, kv + 1, kv, kv + 1 of the fragment; q, kv: the element's own indices)? The
  // sequence end, the mask and the fragment's layout block.
  __device__ __forceinline__ bool visible(const typename V::Params& p, bool block_visible, int b,
                                          int h, int mt, int nt, int i, int q, int kv, int q_len,
                                          int kv_len) const {
    if (kv >= kv_len) return false;
    if (!Split::at(p, rows[mt][i >> 1], cols[nt][i & 1], b, h, q, kv, q_len, kv_len)) return false;
    return block_visible;
  }
};

// FragmentMask for a transposed block (the sm90 backward holds S^T, keys x query rows):
// the thread's rows are keys kv0 and kv0 + 8, its columns query rows q0 + 8 nt + j, and
// element i of fragment nt is key kv0 + 8 (i >> 1), query q0 + 8 nt + (i & 1). The row
// and column parts are the same functions, each held where it varies.
template <class V, int NT>
struct TransposedFragmentMask {
  using Split = MaskSplit<V>;
  typename Split::Col keys[2];
  typename Split::Row queries[NT][2];

  __device__ __forceinline__ TransposedFragmentMask(const typename V::Params& p, int b, int h,
                                                    int kv0, int q0, int q_len, int kv_len) {
#pragma unroll
    for (int half = 0; half < 2; ++half) keys[half] = Split::col(p, b, h, kv0 + 8 * half, q_len, kv_len);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) queries[nt][j] = Split::row(p, b, h, q0 + 8 * nt + j, q_len, kv_len);
  }

  __device__ __forceinline__ bool visible(const typename V::Params& p, bool block_visible, int b,
                                          int h, int nt, int i, int q, int kv, int q_len,
                                          int kv_len) const {
    if (kv >= kv_len) return false;
    if (!Split::at(p, queries[nt][i & 1], keys[i >> 1], b, h, q, kv, q_len, kv_len)) return false;
    return block_visible;
  }
};

}  // namespace fg
