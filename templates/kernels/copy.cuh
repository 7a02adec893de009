// Global -> shared memory copies with cp.async (16 bytes per instruction, no registers
// in between), so the next K/V (or Q/dO) tile lands while the current one computes.
//
// Rows past the end of a sequence are zero-filled (src-size 0): a zero key row gives a
// finite score that the bounds mask then hides, and a zero value row keeps P V free of
// NaN garbage. Requires 16-byte aligned rows (flashgen/runtime checks this on the host).
#pragma once
#include <cstdint>

#include "mma.cuh"

namespace fg {

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(smem_address(smem)), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
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

}  // namespace fg
