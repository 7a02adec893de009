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

// The rows of one K/V tile of a paged cache where the tile spans pages (pages shorter
// than the general instance's tile, or not a multiple of it). Lane j of each warp reads page j of
// the tile's window up front, every lane's read independent, so a tile waits for the
// table once, as a tile in one page does; a row then takes its page from the lane that
// holds it by a shuffle, and each thread follows its rows' place in their page by adds
// (load_tile_swizzled asks for a thread's rows in increasing order, every lane for every
// row). A table read and a division for every row had a tile across pages take the
// forward 2.2-2.5x the time of one in a page; a cursor that read the table at each page
// crossed, in the middle of a thread's copies, 1.8x (PERF.md, paged KV).
template <class T>
struct PageWindow {
  const Strided4<const T>& x;
  int page_size, hk;
  int first_offset;  // the tile's first row's place in its page
  int page;          // this lane's page of the window
  int last = -1, slot = 0, offset = 0;

  // The window is a warp's 32 lanes: a tile of `rows` rows starting anywhere in a page
  // touches at most (rows + page_size - 2) / page_size + 1 pages.
  __host__ __device__ static constexpr bool covers(int rows, int page_size) {
    return (rows + page_size - 2) / page_size + 1 <= 32;
  }

  // table: the batch entry's row of block_table; k0: the tile's first row; rows: the
  // tile's valid rows (> 0)
  __device__ __forceinline__ PageWindow(const Strided4<const T>& x_, const int* table,
                                        int page_size_, int hk_, int k0, int rows)
      : x(x_), page_size(page_size_), hk(hk_) {
    const int first = k0 / page_size;
    first_offset = k0 - first * page_size;
    const int pages = (first_offset + rows - 1) / page_size + 1;
    const int lane = threadIdx.x & 31;
    page = lane < pages ? table[first + lane] : 0;
  }

  // row r of the tile (r increasing from call to call; rows past the valid ones give a
  // pointer that is not read)
  __device__ __forceinline__ const T* row(int r) {
    if (last < 0) {
      const int o = first_offset + r;
      slot = o / page_size;
      offset = o - slot * page_size;
    } else {
      offset += r - last;
      while (offset >= page_size) {
        offset -= page_size;
        ++slot;
      }
    }
    last = r;
    return x.at(__shfl_sync(0xffffffffu, page, slot & 31), hk, offset);
  }
};

// A thread's rows of a K/V tile in a paged cache, dealt out in bands (copy.cuh
// load_tile_swizzled_banded: rows a step of 1-4 apart, 16-32 to a thread): they lie in at
// most three pages where a band holds at most 2 page_size + 1 rows (pages of 16 rows and
// more at 64 and 128 columns, of 8 and more at 256). The thread reads those pages' table
// entries together when the tile starts (independent loads, one latency) and forms each
// page's first-row address once; a row then costs an add, a compare and its address from
// its page's. Against PageWindow (a shuffle and a full address per row, a thread's rows 8
// apart and so in a new page every other row at 16-row pages), a tile of pages of 16 read
// 1.36x the time of one page (decoding, d = 128, PERF.md "decoding with one consumer").
template <class T>
struct PageBand {
  const Strided4<const T>& x;
  int page_size;
  int offset;                // the last row's place in its page
  int last;                  // the last row asked for
  const T* page[3];          // this thread's pages' first rows, in order (register-held:
                             // only shifted, never indexed at run time)

  __host__ __device__ static constexpr bool covers(int band, int page_size) {
    return band <= 2 * page_size + 1;
  }

  // table: the batch entry's row of block_table; k0: the tile's first row; rows: the
  // tile's valid rows (> 0); r0: this thread's first row of the tile
  __device__ __forceinline__ PageBand(const Strided4<const T>& x_, const int* table,
                                      int page_size_, int hk, int k0, int rows, int r0)
      : x(x_), page_size(page_size_), last(r0) {
    const int row = k0 + r0;
    const int first = row / page_size;
    offset = row - first * page_size;
    // rows past the valid ones take the last valid row's page (their address is not read)
    const int last_page = (k0 + rows - 1) / page_size;
    int entry[3];
#pragma unroll
    for (int j = 0; j < 3; ++j) entry[j] = table[min(first + j, last_page)];
#pragma unroll
    for (int j = 0; j < 3; ++j) page[j] = x.at(entry[j], hk, 0);
  }

  // row r of the tile (r increasing, at most page_size past the last)
  __device__ __forceinline__ const T* row(int r) {
    offset += r - last;
    last = r;
    if (offset >= page_size) {
      offset -= page_size;
      page[0] = page[1];
      page[1] = page[2];
    }
    return page[0] + int64_t(offset) * x.row;
  }
};

// kGeneral (forward.cuh): the stream may read a paged KV cache (args.cuh Shape).
// kPageBands: a tile across pages may load its rows in bands (PageBand), where the loading
// threads have the registers for its three page addresses (forward_sm90_ws.cuh says
// which instances); kBandUnroll: load_tile_swizzled_banded's UNROLL.
template <class V, class T, int D, int Dv, int BM, int BN, int Threads, bool kGeneral = false,
          class Layout = PaddedRows, bool kPageBands = false, int kBandUnroll = 0>
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
          // a tile across pages: its pages read once, a warp's lanes holding them
          // (PageWindow), where the tile is whole passes of load_tile_swizzled (the same
          // calls in every lane, for the shuffles) and pages of more than a few rows
          if (n.page_size % BN != 0) {
            const int* table = n.block_table + int64_t(b) * n.pages_per_seq;
            using Bands = BandedRows<BN, COLS, Threads>;
            if (kPageBands && PageBand<T>::covers(Bands::kBand, n.page_size)) {
              PageBand<T> band(x, table, n.page_size, hk, k0, min(rows, BN), Bands::first_row());
              load_tile_swizzled_banded<BN, COLS, Threads, kBandUnroll>(
                  smem, [&](int r) { return band.row(r); }, rows, x.data);
              return;
            }
            constexpr bool kWholePasses = BN % (Threads / (COLS / 8)) == 0;
            if (kWholePasses && PageWindow<T>::covers(BN, n.page_size)) {
              PageWindow<T> window(x, table, n.page_size, hk, k0, min(rows, BN));
              load_tile_swizzled<BN, COLS, Threads>(
                  smem, [&](int r) { return window.row(r); }, rows, x.data);
            } else {  // each row finds its page (rows past the valid ones read the last's)
              load_tile_swizzled<BN, COLS, Threads>(
                  smem,
                  [&](int r) {
                    const int row = k0 + min(r, rows - 1);
                    return x.at(table[row / n.page_size], hk, row % n.page_size);
                  },
                  rows, x.data);
            }
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
