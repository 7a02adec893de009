// Hopper's warpgroup MMA (wgmma, sm_90a): the GEMMs of the sm90 kernel family.
//
// A warpgroup (4 consecutive warps, 128 threads) multiplies a 64-row A by a B in shared
// memory, asynchronously: the instructions are issued, committed as a group, and waited
// for. Operands in shared memory are described by a 64-bit descriptor (start address,
// two strides, swizzle mode) instead of being read by ldmatrix.
//
// Register layouts (why the mma.sync family's softmax, masks and dropout serve unchanged):
// warp w of the warpgroup holds rows 16w .. 16w + 15 of the m64 accumulator, and within
// the warp the N/8 n8 column blocks are laid out exactly as mma.sync's m16n8 C fragments
// (mma.cuh): c[nt][0..3]. A from registers (m64 x k16) is mma.sync's m16n8k16 A fragment
// per warp, so accumulator_to_a packs P for P V as before.
//
// Shared-memory layout (SwizzledTile below): rows of 64 elements (128 bytes) in blocks of
// 64 columns; inside a block the 16-byte chunk c of row r sits at chunk c ^ (r % 8), the
// 128-byte swizzle, which both wgmma and conflict-free cp.async stores need. Blocks start
// on 1024-byte boundaries (8 rows), so the descriptors' base offset is 0.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <type_traits>

#include "mma.cuh"

namespace fg {

// ROWS x COLS elements of a 2-byte type, 128-byte swizzled in blocks of 64 columns.
template <int ROWS, int COLS>
struct SwizzledTile {
  static_assert(COLS % 64 == 0, "swizzled tiles are whole 64-column (128-byte) blocks");
  static_assert(ROWS % 8 == 0, "a swizzle atom is 8 rows");
  static constexpr int kBlockBytes = ROWS * 128;  // one 64-column block
  static constexpr int kBytes = kBlockBytes * (COLS / 64);
  // byte offset of the 16-byte chunk holding columns c .. c + 7 of row r (c % 8 == 0):
  // its 64-column block, the row, and the chunk's place in the row, swizzled
  __device__ __forceinline__ static int chunk_offset(int r, int c) {
    return (c >> 6) * kBlockBytes + r * 128 + ((((c >> 3) & 7) ^ (r & 7)) << 4);
  }
};

// The descriptor of a 128-byte-swizzled operand at shared address `addr`. K-major (the
// contraction dimension contiguous: Q and K for Q K^T): stride_bytes = 1024, the step
// between 8-row groups, and the leading offset is unused. MN-major (V for P V):
// leading_bytes = the step between 64-column blocks along N, stride_bytes = 1024 between
// 8-row groups along K.
__device__ __forceinline__ uint64_t smem_descriptor(uint32_t addr, uint32_t leading_bytes,
                                                    uint32_t stride_bytes) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((leading_bytes & 0x3FFFF) >> 4) << 16) |
         (uint64_t((stride_bytes & 0x3FFFF) >> 4) << 32) | (uint64_t(1) << 62);  // 1: 128B swizzle
}

// Four 8 x 8 b16 matrices from the warp's registers into shared memory (sm_90): r[i]
// holds this lane's pair of matrix i in the accumulator layout (row lane / 4, columns
// 2 (lane % 4), +1), and lane l gives the address of row l % 8 of matrix l / 8 (16
// contiguous bytes). A quarter of the instructions of storing each pair by itself.
__device__ __forceinline__ void stmatrix_x4(void* row, uint32_t r0, uint32_t r1, uint32_t r2,
                                            uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n"
               :: "r"(smem_address(row)), "r"(r0), "r"(r1), "r"(r2), "r"(r3) : "memory");
}

// Orders this thread's earlier register writes (accumulators, A fragments) before the
// wgmmas that read them.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}
// Keeps nvcc from moving reads or writes of an accumulator across the asynchronous
// window (the registers are written by the tensor cores until wgmma_wait).
template <int NT>
__device__ __forceinline__ void fence_operand(float (&c)[NT][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+f"(c[nt][i]) :: "memory");
}

// Shared memory written by the threads (cp.async, st.shared) and read next by wgmma: the
// writes must be made visible to the async proxy, by each writing thread, before the
// barrier.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The instructions: c (m64 x N, fp32) = A B + (accumulate ? c : 0), one wrapper per N
// (64-bit descriptors, the accumulate flag as a predicate). wgmma_ss: A and B in shared
// memory, both K-major; wgmma_ss_mn_major: both MN-major (the two transpose bits: the
// backward's dQ = dS K reads dS^T and K as they lie); wgmma_ss_b_mn_major: A K-major, B
// MN-major (d = 256's dV += P^T dO with P^T from shared memory). wgmma_rs: A from
// registers, B MN-major.
// Inline asm names every accumulator register, so the macros below spell out the lists:
// FG_D<n> the PTX operands %0 .. %n-1, FG_ACC<n> their constraints.
#define FG_ACC4(c, i) "+f"(c[i][0]), "+f"(c[i][1]), "+f"(c[i][2]), "+f"(c[i][3])
#define FG_ACC16(c, i) FG_ACC4(c, i), FG_ACC4(c, i + 1), FG_ACC4(c, i + 2), FG_ACC4(c, i + 3)
#define FG_ACC32(c, i) FG_ACC16(c, i), FG_ACC16(c, i + 4)
#define FG_D16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define FG_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define FG_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define FG_D40 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39}"
#define FG_D48 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}"
#define FG_D80 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79}"
#define FG_D88 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87}"
#define FG_D96 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}"
#define FG_D128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define FG_SS_IN "l"(desc_a), "l"(desc_b), "r"(accumulate)
#define FG_RS_IN "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate)
// One instruction. AB: its A and B operands; PRED: the accumulate flag's operand; TAIL:
// the immediate scale and transpose arguments; then the inputs and the accumulators.
#define FG_WGMMA_ASM(TY, SHAPE, DREGS, AB, PRED, TAIL, INPUTS, ...)                       \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " PRED ", 0;\n"                          \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " " DREGS ", " AB \
               ", p, " TAIL ";\n}\n"                                                      \
               : __VA_ARGS__ : INPUTS)
#define FG_WGMMA_SS(NT, SHAPE, DREGS, AB, PRED, ...)                                      \
  FG_WGMMA_SS_AS(wgmma_ss, "1, 1, 0, 0", NT, SHAPE, DREGS, AB, PRED, __VA_ARGS__)         \
  FG_WGMMA_SS_AS(wgmma_ss_mn_major, "1, 1, 1, 1", NT, SHAPE, DREGS, AB, PRED, __VA_ARGS__) \
  FG_WGMMA_SS_AS(wgmma_ss_b_mn_major, "1, 1, 0, 1", NT, SHAPE, DREGS, AB, PRED, __VA_ARGS__)
#define FG_WGMMA_SS_AS(NAME, TRANSPOSE, NT, SHAPE, DREGS, AB, PRED, ...)                  \
  template <class T>                                                                      \
  __device__ __forceinline__ void NAME(float (&c)[NT][4], uint64_t desc_a, uint64_t desc_b, \
                                       int accumulate) {                                  \
    if constexpr (std::is_same_v<T, __half>)                                              \
      FG_WGMMA_ASM("f16", SHAPE, DREGS, AB, PRED, TRANSPOSE, FG_SS_IN, __VA_ARGS__);       \
    else                                                                                  \
      FG_WGMMA_ASM("bf16", SHAPE, DREGS, AB, PRED, TRANSPOSE, FG_SS_IN, __VA_ARGS__);      \
  }
#define FG_WGMMA_RS(NT, SHAPE, DREGS, AB, PRED, ...)                                      \
  template <class T>                                                                      \
  __device__ __forceinline__ void wgmma_rs(float (&c)[NT][4], const uint32_t (&a)[4],     \
                                           uint64_t desc_b, int accumulate) {              \
    if constexpr (std::is_same_v<T, __half>)                                              \
      FG_WGMMA_ASM("f16", SHAPE, DREGS, AB, PRED, "1, 1, 1", FG_RS_IN, __VA_ARGS__);       \
    else                                                                                  \
      FG_WGMMA_ASM("bf16", SHAPE, DREGS, AB, PRED, "1, 1, 1", FG_RS_IN, __VA_ARGS__);      \
  }
FG_WGMMA_SS(4, "m64n32k16", FG_D16, "%16, %17", "%18", FG_ACC16(c, 0))
FG_WGMMA_SS(8, "m64n64k16", FG_D32, "%32, %33", "%34", FG_ACC32(c, 0))
FG_WGMMA_SS(10, "m64n80k16", FG_D40, "%40, %41", "%42", FG_ACC32(c, 0), FG_ACC4(c, 8), FG_ACC4(c, 9))
FG_WGMMA_SS(12, "m64n96k16", FG_D48, "%48, %49", "%50", FG_ACC32(c, 0), FG_ACC16(c, 8))
FG_WGMMA_SS(16, "m64n128k16", FG_D64, "%64, %65", "%66", FG_ACC32(c, 0), FG_ACC32(c, 8))
FG_WGMMA_SS(20, "m64n160k16", FG_D80, "%80, %81", "%82", FG_ACC32(c, 0), FG_ACC32(c, 8), FG_ACC16(c, 16))
FG_WGMMA_SS(22, "m64n176k16", FG_D88, "%88, %89", "%90", FG_ACC32(c, 0), FG_ACC32(c, 8), FG_ACC16(c, 16), FG_ACC4(c, 20), FG_ACC4(c, 21))
FG_WGMMA_SS(24, "m64n192k16", FG_D96, "%96, %97", "%98", FG_ACC32(c, 0), FG_ACC32(c, 8), FG_ACC32(c, 16))
FG_WGMMA_SS(32, "m64n256k16", FG_D128, "%128, %129", "%130", FG_ACC32(c, 0), FG_ACC32(c, 8), FG_ACC32(c, 16), FG_ACC32(c, 24))
FG_WGMMA_RS(8, "m64n64k16", FG_D32, "{%32, %33, %34, %35}, %36", "%37", FG_ACC32(c, 0))
FG_WGMMA_RS(16, "m64n128k16", FG_D64, "{%64, %65, %66, %67}, %68", "%69", FG_ACC32(c, 0), FG_ACC32(c, 8))
FG_WGMMA_RS(32, "m64n256k16", FG_D128, "{%128, %129, %130, %131}, %132", "%133", FG_ACC32(c, 0), FG_ACC32(c, 8), FG_ACC32(c, 16), FG_ACC32(c, 24))

// The GEMMs. issue_*: the chain of one GEMM's wgmmas, committed as one group; the caller
// waits for it (wgmma_wait<n>: all but the newest n groups done) and then calls
// fence_operand on the result, so that independent GEMMs can run back to back.
// warpgroup_gemm_*: issue and wait.

// c[64 x N] (=, or += with accumulate) A[64 x K] B[N x K]^T: A at a_addr, B at b_addr,
// both SwizzledTile-laid (K-major) with their 64-column blocks a_block / b_block bytes
// apart. A k16 step moves 32 bytes along a 128-byte row; the swizzle is applied by the
// hardware on the address bits, so the start address just advances.
template <class T, int N, int K>
__device__ __forceinline__ void issue_gemm_ss(float (&c)[N / 8][4], uint32_t a_addr, int a_block,
                                              uint32_t b_addr, int b_block, bool accumulate = false) {
  static_assert(K % 16 == 0, "whole k16 steps");
  fence_operand(c);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    const uint32_t offset = (kk % 4) * 32;
    const uint64_t da = smem_descriptor(a_addr + (kk / 4) * a_block + offset, 16, 1024);
    const uint64_t db = smem_descriptor(b_addr + (kk / 4) * b_block + offset, 16, 1024);
    wgmma_ss<T>(c, da, db, accumulate || kk > 0);
  }
  wgmma_commit();
}

// c[64 x N] = A[64 x K] B[K x N], both MN-major: A at a_addr laid as SwizzledTile<K, 64>
// (M contiguous), B at b_addr as SwizzledTile<K, N> with its 64-column blocks b_block
// bytes apart. A k16 step is two 8-row groups: 2048 bytes in each.
template <class T, int N, int K>
__device__ __forceinline__ void issue_gemm_ss_mn_major(float (&c)[N / 8][4], uint32_t a_addr,
                                                       uint32_t b_addr, int b_block) {
  static_assert(K % 16 == 0, "whole k16 steps");
  fence_operand(c);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    const uint64_t da = smem_descriptor(a_addr + kk * 2048, 64 * 128, 1024);
    const uint64_t db = smem_descriptor(b_addr + kk * 2048, b_block, 1024);
    wgmma_ss_mn_major<T>(c, da, db, kk > 0);
  }
  wgmma_commit();
}

// c[64 x N] += A[64 x K] B[K x N]: A K-major at a_addr as issue_gemm_ss reads it, B
// MN-major as issue_gemm_rs reads it.
template <class T, int N, int K>
__device__ __forceinline__ void issue_gemm_ss_b_mn_major(float (&c)[N / 8][4], uint32_t a_addr,
                                                         int a_block, uint32_t b_addr,
                                                         int b_block) {
  static_assert(K % 16 == 0, "whole k16 steps");
  fence_operand(c);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    const uint64_t da = smem_descriptor(a_addr + (kk / 4) * a_block + (kk % 4) * 32, 16, 1024);
    const uint64_t db = smem_descriptor(b_addr + kk * 2048, b_block, 1024);
    wgmma_ss_b_mn_major<T>(c, da, db, 1);
  }
  wgmma_commit();
}

// c[64 x N] += A[64 x K] B[K x N]: A from registers (a[kt] covers k = 16kt .. 16kt + 15),
// B at b_addr laid as SwizzledTile<K, N> (N contiguous: MN-major) with its 64-column blocks
// b_block bytes apart. The registers of a must hold still until the group is waited for.
template <class T, int N, int K>
__device__ __forceinline__ void issue_gemm_rs(float (&c)[N / 8][4], const uint32_t (&a)[K / 16][4],
                                              uint32_t b_addr, int b_block) {
  fence_operand(c);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    wgmma_rs<T>(c, a[kk], smem_descriptor(b_addr + kk * 2048, b_block, 1024), 1);
  }
  wgmma_commit();
}

template <class T, int N, int K>
__device__ __forceinline__ void warpgroup_gemm_ss(float (&c)[N / 8][4], uint32_t a_addr, int a_block,
                                                  uint32_t b_addr, int b_block) {
  issue_gemm_ss<T, N, K>(c, a_addr, a_block, b_addr, b_block);
  wgmma_wait<0>();
  fence_operand(c);
}

template <class T, int N, int K>
__device__ __forceinline__ void warpgroup_gemm_rs(float (&c)[N / 8][4], const uint32_t (&a)[K / 16][4],
                                                  uint32_t b_addr, int b_block) {
  issue_gemm_rs<T, N, K>(c, a, b_addr, b_block);
  wgmma_wait<0>();
  fence_operand(c);
}

}  // namespace fg
