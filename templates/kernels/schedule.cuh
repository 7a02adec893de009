// The K/V stream of one Q tile: the walk of the forward pass and the deterministic dQ
// pass, which hold one Q tile. K/V tiles stream through two shared-memory stages, the
// next tile's cp.async loads issued before this tile computes, so the copy overlaps the
// math. Which tiles, in which order: walk.cuh's TileWalk.
#pragma once
#include "args.cuh"
#include "copy.cuh"
#include "mask.cuh"
#include "mma.cuh"
#include "walk.cuh"

namespace fg {

// How a stream's tiles lie in shared memory. PaddedRows: rows padded by 16 bytes for
// ldmatrix (the mma.sync family). SwizzledRows: 128-byte-swizzled 64-column blocks for
// wgmma (the sm90 family), which reads them through the async proxy, so the threads'
// cp.async writes need a proxy fence before the barrier that publishes them.
struct PaddedRows {
  template <int ROWS, int COLS>
  static constexpr int kElements = ROWS * (COLS + kSmemPad);
  static constexpr bool kAsyncProxy = false;
  template <int ROWS, int COLS, int THREADS, class T>
  __device__ __forceinline__ static void load(T* smem, const T* gmem, int64_t stride,
                                              int rows_valid, const T* fallback) {
    load_tile<ROWS, COLS, THREADS>(smem, gmem, stride, rows_valid, fallback);
  }
};
struct SwizzledRows {
  template <int ROWS, int COLS>
  static constexpr int kElements = ROWS * COLS;
  static constexpr bool kAsyncProxy = true;
  template <int ROWS, int COLS, int THREADS, class T>
  __device__ __forceinline__ static void load(T* smem, const T* gmem, int64_t stride,
                                              int rows_valid, const T* fallback) {
    load_tile_swizzled<ROWS, COLS, THREADS>(
        smem, [=](int r) { return gmem + r * stride; }, rows_valid, fallback);
  }
};

// The rows of one batch entry of a paged cache, asked for in increasing order (each
// thread of load_tile_swizzled asks for its rows a pass apart): the cursor keeps the page
// and the row's place in it, so a row costs an add and a page crossed one block_table
// read. A division and a table read for every row had a tile across pages take the
// forward 2.2-2.5x the time of tiles that nest in a page; the cursor took 19 % off, still
// 1.8x, since a crossing's table read stalls the thread among its copies (PERF.md, paged KV).
template <class T>
struct PageCursor {
  const Strided4<const T>& x;
  const int* pages;  // this entry's row of block_table
  int page_size, hk;
  int last = -1, offset = 0, page = 0;

  __device__ __forceinline__ const T* row(int r) {
    if (last < 0) {
      const int slot = r / page_size;
      offset = r - slot * page_size;
      pages += slot;
      page = *pages;
    } else {
      offset += r - last;
      while (offset >= page_size) {  // (r is a valid row: its page is in the table)
        offset -= page_size;
        page = *++pages;
      }
    }
    last = r;
    return x.at(page, hk, offset);
  }
};

// kGeneral (forward.cuh): the stream may read a paged KV cache (args.cuh Shape).
template <class V, class T, int D, int Dv, int BM, int BN, int Threads, bool kGeneral = false,
          class Layout = PaddedRows>
struct KvStream {
  static constexpr int kK = Layout::template kElements<BN, D>;  // elements per stage
  static constexpr int kV = Layout::template kElements<BN, Dv>;

  T* sK;  // [2][kK]
  T* sV;  // [2][kV]
  const typename V::Params& p;
  const Shape& n;
  const BlockSparseArgs& sparse;
  const Strided4<const T>& k;
  const Strided4<const T>& v;
  int b, h, hk, q0;
  TileRow row;

  __device__ __forceinline__ TileMask classify(int entry) const {
    return classify_entry<V, BM, BN>(p, sparse, b, h, q0, TileRow::tile_of(entry) * BN, n.q_len,
                                     n.kv_len, entry);
  }
  __device__ __forceinline__ void load(int entry, int stage) const {
    load_rows<D>(k, sK + stage * kK, entry);
    load_rows<Dv>(v, sV + stage * kV, entry);
  }
  // The rows of tile `entry` of x (K or V, COLS wide) into smem.
  template <int COLS>
  __device__ __forceinline__ void load_rows(const Strided4<const T>& x, T* smem, int entry) const {
    const int k0 = TileRow::tile_of(entry) * BN, rows = n.kv_len - k0;
    if constexpr (kGeneral) {
      if (n.paged()) {
        if constexpr (std::is_same_v<Layout, SwizzledRows>) {
          // a tile across pages (pages shorter than a tile, or 256-row pages under 160-key
          // tiles): each thread follows its rows from page to page
          if (n.page_size % BN != 0) {
            PageCursor<T> cursor{x, n.block_table + int64_t(b) * n.pages_per_seq, n.page_size, hk};
            load_tile_swizzled<BN, COLS, Threads>(
                smem, [&](int r) { return cursor.row(k0 + r); }, rows, x.data);
            return;
          }
        }
        // a tile lies in one page: the host checks page_size % BN == 0 (api.check_page_size)
        const int page = n.block_table[int64_t(b) * n.pages_per_seq + k0 / n.page_size];
        Layout::template load<BN, COLS, Threads>(smem, x.at(page, hk, k0 % n.page_size), x.row,
                                                 rows, x.data);
        return;
      }
    }
    Layout::template load<BN, COLS, Threads>(smem, x.at(b, hk, k0), x.row, rows, x.at(b, hk, 0));
  }

  // The walk over this Q tile's K/V tiles (a warp-specialised kernel walks it in its
  // producer and in its consumers alike).
  __device__ __forceinline__ auto walk() const {
    return tile_walk([this](int) { return row; },
                     [this](int, int entry) { return classify(entry); }, 1,
                     [this](int, int tile, int tiles) {
                       return span_skipped<V>(p, b, h, q0, BM, tile * BN, tiles * BN,
                                              n.q_len, n.kv_len);
                     });
  }

  // body(k0, tile mask, K tile, V tile) per tile, the next tile loading under it (Stages
  // = 2: sK and sV hold two tiles each), or, where shared memory holds one, after it.
  template <int Stages = 2, class Body>
  __device__ __forceinline__ void for_each(Body&& body) const {
    static_assert(Stages == 1 || Stages == 2, "one or two K/V stages");
    if constexpr (Stages == 1) {
      for (auto walk = this->walk(); !walk.done();) {
        const int entry = walk.entry;
        const TileMask tile = walk.mask;
        __syncthreads();  // every warp is done with the previous tile
        load(entry, 0);
        cp_async_commit();
        walk.advance();  // classifying the next tile under the copies
        cp_async_wait<0>();
        if constexpr (Layout::kAsyncProxy) fence_proxy_async();
        __syncthreads();  // the tile has landed
        body(TileRow::tile_of(entry) * BN, tile, sK, sV);
      }
      return;
    }
    auto walk = this->walk();
    if (!walk.done()) load(walk.entry, 0);
    cp_async_commit();
    for (int stage = 0; !walk.done(); stage ^= 1) {
      const int entry = walk.entry;
      const TileMask tile = walk.mask;
      cp_async_wait<0>();
      if constexpr (Layout::kAsyncProxy) fence_proxy_async();
      __syncthreads();  // this stage has landed, and every warp is done with the other one
      walk.advance();
      if (!walk.done()) load(walk.entry, stage ^ 1);
      cp_async_commit();
      body(TileRow::tile_of(entry) * BN, tile, sK + stage * kK, sV + stage * kV);
    }
  }
};

}  // namespace fg
