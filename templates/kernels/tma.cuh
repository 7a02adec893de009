// The Tensor Memory Accelerator (TMA, sm_90): tiles copied from global into shared memory
// by the copy engine, described once on the host by a tensor map, issued by one thread.
//
// Why (PERF.md, issue 8): the warp-specialised forward's producer loaded a 128 x 128 K/V
// tile pair with 4096 cp.async from 128 threads, each with its own address math, and those
// instructions took issue slots from the consumers' softmax on the same SM sub-partitions.
// A TMA load is one instruction per 64-column box: the engine does the addressing, the
// 128-byte swizzle (the layout wgmma.cuh's SwizzledTile and the descriptors expect), the
// zero fill of rows past the tensor's end, and signals an mbarrier with the bytes written.
//
// Host: encode_tensor_map describes a [batch, heads, rows, cols] tensor of 2-byte elements
// (a Strided4, any strides the engine can address) in boxes of `box_rows` rows by 64
// columns. It returns false where the engine cannot address the tensor (a base or a stride
// not a multiple of 16 bytes); the caller then runs a kernel that loads with cp.async.
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "args.cuh"
#include "mma.cuh"

namespace fg {

// The forward's K and V, as the warp-specialised kernel's producer loads them, Q, which
// the persistent one's producer loads too, and O, which its consumers store through an
// output stage (else unused). Passed as a __grid_constant__ kernel parameter: the engine
// reads a tensor map from parameter (or global) memory, by its generic address.
struct KvTensorMaps {
  CUtensorMap k, v, q, o;
};

// The backward's Q and dO (backward_sm90.cuh); active = 0: load them with cp.async.
struct QueryTensorMaps {
  CUtensorMap q, dout;
  int active;
};

// The warp-specialised backward's operands (backward_sm90_ws.cuh): K and V once per CTA,
// Q and dO per tile.
struct BackwardTensorMaps {
  CUtensorMap q, dout, k, v;
};

template <class T>
inline bool encode_tensor_map(CUtensorMap* map, const Strided4<const T>& x, int batch, int heads,
                              int rows, int cols, int box_rows) {
  static_assert(sizeof(T) == 2, "fp16 / bf16 tiles");
  // the driver's entry point, through the runtime (no link against libcuda)
  static const auto encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      fn = nullptr;
      cudaGetLastError();  // the lookup's error is not the next launch's
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr || cols % 64 != 0) return false;
  const int64_t bytes = sizeof(T);
  const int64_t strides[3] = {x.row * bytes, x.head * bytes, x.batch * bytes};
  if (reinterpret_cast<uintptr_t>(x.data) % 16 != 0) return false;
  for (int64_t s : strides)
    if (s <= 0 || s % 16 != 0 || s >= (int64_t(1) << 40)) return false;
  const cuuint64_t dims[4] = {cuuint64_t(cols), cuuint64_t(rows), cuuint64_t(heads),
                              cuuint64_t(batch)};
  const cuuint64_t byte_strides[3] = {cuuint64_t(strides[0]), cuuint64_t(strides[1]),
                                      cuuint64_t(strides[2])};
  const cuuint32_t box[4] = {64, cuuint32_t(box_rows), 1, 1};  // 64 columns: one 128-byte row
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type = std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                             : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  return encode(map, type, 4, const_cast<T*>(x.data), dims, byte_strides, box, element_strides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;  // out of bounds: zeros
}

// Device: one box (box_rows x 64 columns at column c, row r of (b, h)) into shared memory
// at smem (1024-byte aligned: the swizzle pattern repeats every 8 rows of 128 bytes); the
// mbarrier's transaction count drops by the box's bytes when they have landed.
__device__ __forceinline__ void tma_load_box(void* smem, const CUtensorMap& map, int c, int r,
                                             int h, int b, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
      :: "r"(smem_address(smem)), "l"(reinterpret_cast<uint64_t>(&map)), "r"(c), "r"(r), "r"(h),
         "r"(b), "r"(smem_address(bar))
      : "memory");
}

// The rows r .. r + ROWS - 1 of (b, h), every column, into a SwizzledTile<ROWS, COLS>:
// one box per 64-column block.
template <int ROWS, int COLS>
__device__ __forceinline__ void tma_load_tile(void* smem, const CUtensorMap& map, int r, int h,
                                              int b, uint64_t* bar) {
#pragma unroll
  for (int c = 0; c < COLS / 64; ++c)
    tma_load_box(static_cast<unsigned char*>(smem) + c * ROWS * 128, map, 64 * c, r, h, b, bar);
}

// Device: the reverse of tma_load_box, one box from shared memory (the layout that
// tma_load_box writes) to rows r .. r + box_rows - 1, columns c .. c + 63 of (b, h), in the
// issuing thread's current bulk group; rows past the tensor's end are not written. The
// threads' writes to the box need fence_proxy_async and a barrier before it, and the box
// may be overwritten only after bulk_wait_read.
__device__ __forceinline__ void tma_store_box(const void* smem, const CUtensorMap& map, int c,
                                              int r, int h, int b) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n"
      :: "l"(reinterpret_cast<uint64_t>(&map)), "r"(smem_address(smem)), "r"(c), "r"(r), "r"(h),
         "r"(b)
      : "memory");
}

// A SwizzledTile<ROWS, COLS> to rows r .. r + ROWS - 1 of (b, h): one box per 64 columns
template <int ROWS, int COLS>
__device__ __forceinline__ void tma_store_tile(const void* smem, const CUtensorMap& map, int r,
                                               int h, int b) {
#pragma unroll
  for (int c = 0; c < COLS / 64; ++c)
    tma_store_box(static_cast<const unsigned char*>(smem) + c * ROWS * 128, map, 64 * c, r, h, b);
}

// Device: `bytes` of fp32 in shared memory added element by element to global memory by
// the copy engine (both addresses 16-byte aligned, bytes a multiple of 16), in the
// issuing thread's current bulk group; the shared source may be overwritten only after
// bulk_wait_read, and the sums are complete in global memory after bulk_wait.
__device__ __forceinline__ void bulk_reduce_add_f32(float* gmem, const float* smem, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
               :: "l"(gmem), "r"(smem_address(smem)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// until at most N of this thread's bulk groups are still reading shared memory
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" :: "n"(N) : "memory");
}
// until at most N of this thread's bulk groups are incomplete
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" :: "n"(N) : "memory");
}

}  // namespace fg
