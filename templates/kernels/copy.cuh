// Moving tiles between global memory and the SM. In: cp.async into shared memory (16
// bytes per instruction, no registers in between), so the next K/V (or Q/dO) tile lands
// while the current one computes. Out: accumulators from registers to rows of T.
//
// Rows past the end of a sequence are zero-filled (src-size 0): a zero key row gives a
// finite score that the bounds mask then hides, and a zero value row keeps P V free of
// NaN garbage. Requires 16-byte aligned rows (flashgen/runtime checks this on the host).
#pragma once
#include <cstdint>
#include <type_traits>

#include "args.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

namespace fg {

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(smem_address(smem)), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
               :: "r"(smem_address(smem)), "l"(gmem), "r"(valid ? 4 : 0));
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

// rows x COLS elements from global (row pitch `stride` elements) into a padded shared
// tile; rows >= rows_valid become zero. `fallback` is any valid global address, used as
// the (unread) source of zero-filled rows.
//
// When the threads cover whole rows per pass (THREADS a multiple of the row's 16-byte
// chunks: every head dim but 96 and 192), each thread walks one column of chunks down
// the tile with one pointer, strength-reduced: about 5 instructions per cp.async. The
// general loop below re-derives row, column and a 64-bit address per chunk, ~30
// instructions; in the forward pass it was a third of the kernel's instructions
// (ncu, PERF.md).
template <int ROWS, int COLS, int THREADS, class T>
__device__ __forceinline__ void load_tile(T* smem, const T* gmem, int64_t stride, int rows_valid,
                                          const T* fallback) {
  static_assert(COLS % 8 == 0, "rows are copied in 16-byte chunks");
  constexpr int kChunks = COLS / 8, kLd = COLS + kSmemPad;
  if constexpr (THREADS % kChunks == 0) {
    constexpr int kRowsPerPass = THREADS / kChunks;
    constexpr int kPasses = (ROWS + kRowsPerPass - 1) / kRowsPerPass;
    const int r0 = threadIdx.x / kChunks, c = 8 * (threadIdx.x % kChunks);
    const T* src = gmem + r0 * stride + c;
    T* dst = smem + r0 * kLd + c;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int r = r0 + i * kRowsPerPass;
      if (ROWS % kRowsPerPass == 0 || r < ROWS) {
        const bool valid = r < rows_valid;
        cp_async_16(dst + i * kRowsPerPass * kLd, valid ? src : fallback, valid);
      }
      src += kRowsPerPass * stride;
    }
  } else {
#pragma unroll 1
    for (int i = threadIdx.x; i < ROWS * kChunks; i += THREADS) {
      const int r = i / kChunks, c = i % kChunks;
      const bool valid = r < rows_valid;
      cp_async_16(smem + r * kLd + c * 8, valid ? gmem + r * stride + c * 8 : fallback, valid);
    }
  }
}

// rows x COLS elements into a 128-byte-swizzled shared tile (wgmma.cuh SwizzledTile),
// for the sm90 family, whose wgmma reads operands in that layout. row_ptr(r) is row r's
// first element in global memory (a strided tensor, or a page of a paged cache); rows >=
// rows_valid become zero. Each thread keeps one 16-byte column chunk and walks down the
// rows: 8 neighbouring threads fill one 128-byte row, which the swizzle spreads over all
// banks. Every thread calls row_ptr for each row it walks, valid or not, in increasing
// order, and where ROWS is whole passes every lane of a warp makes the same calls: so
// row_ptr may keep state from row to row and shuffle across the warp (schedule.cuh
// PageWindow). The pointer of a row past rows_valid is not read.
template <int ROWS, int COLS, int THREADS, class T, class RowPtr>
__device__ __forceinline__ void load_tile_swizzled(T* smem, RowPtr row_ptr, int rows_valid,
                                                   const T* fallback) {
  using Tile = SwizzledTile<ROWS, COLS>;
  constexpr int kChunks = COLS / 8;
  static_assert(THREADS % kChunks == 0, "a pass covers whole rows");
  constexpr int kRowsPerPass = THREADS / kChunks;
  // a pass of whole 8-row swizzle atoms keeps each thread's chunk in the same place of
  // every atom, so its offset only steps; a narrower pass (128 threads over 256 columns:
  // 4 rows) swizzles each row anew
  constexpr bool kWholeAtoms = kRowsPerPass % 8 == 0;
  const int r0 = threadIdx.x / kChunks, c = threadIdx.x % kChunks;
  unsigned char* const base = reinterpret_cast<unsigned char*>(smem);
  unsigned char* const dst = base + Tile::chunk_offset(r0, 8 * c);
#pragma unroll
  for (int i = 0; i < (ROWS + kRowsPerPass - 1) / kRowsPerPass; ++i) {
    const int r = r0 + i * kRowsPerPass;
    if (ROWS % kRowsPerPass == 0 || r < ROWS) {
      const bool valid = r < rows_valid;
      const T* const src = row_ptr(r);
      cp_async_16(kWholeAtoms ? dst + i * kRowsPerPass * 128 : base + Tile::chunk_offset(r, 8 * c),
                  valid ? src + 8 * c : fallback, valid);
    }
  }
}

// load_tile_swizzled with the rows dealt out in bands: warp w of the THREADS / 32 takes
// rows [w B, (w + 1) B) of the ROWS (B = banded_rows's band), 32 / (COLS / 8) rows a step,
// so that a thread's rows are 2 or 4 apart (1 at 256 columns), not 8. For a source whose
// rows change place every few rows (a paged cache's pages of 16, schedule.cuh PageBand) a
// thread then crosses one or two places per tile, not one every other row. row_ptr(r) as
// load_tile_swizzled's: each thread calls it for each of its rows, valid or not, r
// increasing.
template <int ROWS, int COLS, int THREADS>
struct BandedRows {
  static constexpr int kChunks = COLS / 8;             // 16-byte chunks of a row
  static constexpr int kRowsPerStep = 32 / kChunks;    // a warp's rows per instruction
  static constexpr int kBand = ROWS / (THREADS / 32);  // a warp's rows
  static_assert(32 % kChunks == 0 && THREADS % 32 == 0 && ROWS % (THREADS / 32) == 0 &&
                    kBand % kRowsPerStep == 0,
                "a warp's band is whole steps of whole rows");
  // this thread's first row, and its 16-byte chunk of every row
  __device__ __forceinline__ static int first_row() {
    return int(threadIdx.x / 32) * kBand + int(threadIdx.x % 32) / kChunks;
  }
  __device__ __forceinline__ static int chunk() { return int(threadIdx.x % 32) % kChunks; }
};

// UNROLL: the band loop's unroll, 0 for all of it (a thread with registers to spare: the
// addresses of all its rows formed ahead of their copies); a few where registers are scarce.
template <int ROWS, int COLS, int THREADS, int UNROLL = 0, class T, class RowPtr>
__device__ __forceinline__ void load_tile_swizzled_banded(T* smem, RowPtr row_ptr, int rows_valid,
                                                          const T* fallback) {
  using Tile = SwizzledTile<ROWS, COLS>;
  using Rows = BandedRows<ROWS, COLS, THREADS>;
  constexpr int kSteps = Rows::kBand / Rows::kRowsPerStep;
  const int r0 = Rows::first_row(), c = Rows::chunk();
  unsigned char* const base = reinterpret_cast<unsigned char*>(smem);
#pragma unroll(UNROLL == 0 ? kSteps : UNROLL)
  for (int i = 0; i < kSteps; ++i) {
    const int r = r0 + i * Rows::kRowsPerStep;
    const bool valid = r < rows_valid;
    const T* const src = row_ptr(r);
    cp_async_16(base + Tile::chunk_offset(r, 8 * c), valid ? src + 8 * c : fallback, valid);
  }
}

// ROWS floats (one per row: lse, delta) into shared memory, 4 bytes per cp.async (a
// row block of a [B, H, N] tensor is only 4-byte aligned); rows >= rows_valid become 0.
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_rows_f32(float* smem, const float* gmem, int rows_valid,
                                              const float* fallback) {
#pragma unroll
  for (int pass = 0; pass < (ROWS + THREADS - 1) / THREADS; ++pass) {
    const int r = threadIdx.x + pass * THREADS;
    if (ROWS % THREADS != 0 && r >= ROWS) break;
    const bool valid = r < rows_valid;
    cp_async_4(smem + r, valid ? gmem + r : fallback, valid);
  }
}

// A warp's fp32 accumulator block acc[MT][NT][4] (first element at row r0, column c0 of
// a tile whose first row is `row_base`; mma.cuh has the layout) to rows of a [B, H, N, C]
// tensor of T (fp16 / bf16, or float, unrounded), times `factor`; rows >= rows_valid are
// left out. Each thread forms one row address per row and reaches its columns by
// constant offsets.
template <class T, int MT, int NT>
__device__ __forceinline__ void store_accumulator(const Strided4<T>& out, int b, int h, int row_base,
                                                  int r0, int c0, int rows_valid,
                                                  const float (&acc)[MT][NT][4], float factor) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row_base + r0 + 16 * mt + g + 8 * half;
      if (row >= rows_valid) continue;
      T* dst = out.at(b, h, row) + c0 + 2 * t;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const float x = acc[mt][nt][2 * half] * factor, y = acc[mt][nt][2 * half + 1] * factor;
        if constexpr (std::is_same_v<T, float>) {
          *reinterpret_cast<float2*>(dst + 8 * nt) = make_float2(x, y);
        } else {
          *reinterpret_cast<uint32_t*>(dst + 8 * nt) = pack2<T>(x, y);
        }
      }
    }
}

}  // namespace fg
