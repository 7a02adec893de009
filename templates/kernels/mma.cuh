// Tensor-core matrix multiply on shared-memory tiles: ldmatrix feeds mma.sync m16n8k16.
//
// Every GEMM of the forward and backward passes is one call of `warp_gemm` (both
// operands in shared memory) or `warp_gemm_rA` (A already in registers, e.g. the
// probabilities P of the forward pass). A warp computes a 16*MT x 8*NT block of C.
//
// Fragment layout of mma.m16n8k16 (g = lane / 4, t = lane % 4):
//   C (f32 x4): c0,c1 -> row g,   cols 2t, 2t+1;   c2,c3 -> row g+8, same cols
//   A (x4 b32): a0 -> (g, 2t..2t+1)  a1 -> (g+8, 2t..)  a2 -> (g, 8+2t..)  a3 -> (g+8, 8+2t..)
//   B (x2 b32): b0 -> (k 2t..2t+1, n g)  b1 -> (k 8+2t.., n g)
// Shared tiles are row-major with a row pitch of (cols + kSmemPad) elements: the pad
// shifts consecutive rows by 16 bytes, so the 8 rows one ldmatrix phase reads fall in
// 8 different bank groups (no bank conflicts, any head dim).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <type_traits>

namespace fg {

constexpr int kSmemPad = 8;  // elements (16 bytes) of padding per shared-memory row

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(smem_address(p)));
}

// c += a * b on one m16n8k16 tile, fp32 accumulation.
template <class T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "fp16 or bf16 only");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats -> one 32-bit register of two T (x in the low half).
template <class T>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

// What rounding x to T loses: x - float(T(x)), exact in fp32.
template <class T>
__device__ __forceinline__ float rounding_residual(float x) {
  if constexpr (std::is_same_v<T, __half>) return x - __half2float(__float2half_rn(x));
  else return x - __bfloat162float(__float2bfloat16_rn(x));
}

// The A fragments of a 16 x 16 k-slice, loaded from a shared tile.
// kTrans = false: A is stored [m][k];  kTrans = true: A is stored [k][m] (we need A = S^T).
template <bool kTrans, class T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* s, int ld, int m0, int k0) {
  const int lane = threadIdx.x & 31, j = lane >> 3, r = lane & 7;
  if constexpr (!kTrans) {
    ldmatrix_x4(a, s + (m0 + r + 8 * (j & 1)) * ld + k0 + 8 * (j >> 1));
  } else {
    ldmatrix_x4_trans(a, s + (k0 + r + 8 * (j >> 1)) * ld + m0 + 8 * (j & 1));
  }
}

// The B fragments of two neighbouring n8 tiles (n0..n0+15) of a 16-deep k-slice.
// kTrans = false: B is stored [n][k] (K rows for Q K^T);  true: stored [k][n] (V for P V).
template <bool kTrans, class T>
__device__ __forceinline__ void load_b2(uint32_t (&b)[4], const T* s, int ld, int n0, int k0) {
  const int lane = threadIdx.x & 31, j = lane >> 3, r = lane & 7;
  if constexpr (!kTrans) {
    ldmatrix_x4(b, s + (n0 + r + 8 * (j >> 1)) * ld + k0 + 8 * (j & 1));
  } else {
    ldmatrix_x4_trans(b, s + (k0 + r + 8 * (j & 1)) * ld + n0 + 8 * (j >> 1));
  }
}

// The B fragments of one n8 tile (for an odd tile count).
template <bool kTrans, class T>
__device__ __forceinline__ void load_b1(uint32_t (&b)[2], const T* s, int ld, int n0, int k0) {
  const int lane = threadIdx.x & 31, j = (lane >> 3) & 1, r = lane & 7;
  if constexpr (!kTrans) {
    ldmatrix_x2(b, s + (n0 + r) * ld + k0 + 8 * j);
  } else {
    ldmatrix_x2_trans(b, s + (k0 + r + 8 * j) * ld + n0);
  }
}

// c[MT][NT] += A[m0 .. m0+16MT, 0..K) * B[0..K, n0 .. n0+8NT), both operands in shared memory.
template <int MT, int NT, int K, bool kTransA, bool kTransB, class T>
__device__ __forceinline__ void warp_gemm(float (&c)[MT][NT][4], const T* sa, int lda, int m0,
                                          const T* sb, int ldb, int n0) {
  static_assert(K % 16 == 0, "k must be a multiple of 16");
#pragma unroll
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) load_a<kTransA>(a[mt], sa, lda, m0 + 16 * mt, k0);
#pragma unroll
    for (int nt = 0; nt + 1 < NT; nt += 2) {
      uint32_t b[4];
      load_b2<kTransB>(b, sb, ldb, n0 + 8 * nt, k0);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816<T>(c[mt][nt], a[mt], b[0], b[1]);
        mma_16816<T>(c[mt][nt + 1], a[mt], b[2], b[3]);
      }
    }
    if constexpr (NT % 2 == 1) {
      uint32_t b[2];
      load_b1<kTransB>(b, sb, ldb, n0 + 8 * (NT - 1), k0);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma_16816<T>(c[mt][NT - 1], a[mt], b[0], b[1]);
    }
  }
}

// c[MT][NT] += A * B[0..16KT, n0 .. n0+8NT) for MT m16 tiles whose A fragments are in
// registers (a[mt][kt] covers k = 16kt .. 16kt+15), B in shared memory. Each B fragment
// loaded serves all MT tiles: the shared-memory reads per MMA fall as 1 / MT.
template <int MT, int KT, int NT, bool kTransB, class T>
__device__ __forceinline__ void warp_gemm_rA(float (&c)[MT][NT][4], const uint32_t (&a)[MT][KT][4],
                                             const T* sb, int ldb, int n0) {
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
#pragma unroll
    for (int nt = 0; nt + 1 < NT; nt += 2) {
      uint32_t b[4];
      load_b2<kTransB>(b, sb, ldb, n0 + 8 * nt, 16 * kt);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816<T>(c[mt][nt], a[mt][kt], b[0], b[1]);
        mma_16816<T>(c[mt][nt + 1], a[mt][kt], b[2], b[3]);
      }
    }
    if constexpr (NT % 2 == 1) {
      uint32_t b[2];
      load_b1<kTransB>(b, sb, ldb, n0 + 8 * (NT - 1), 16 * kt);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma_16816<T>(c[mt][NT - 1], a[mt][kt], b[0], b[1]);
    }
  }
}

// An accumulator block c[NT] (one m16 tile, NT = 2 KT n8 tiles) as the A fragments of
// the next GEMM, whose k runs over c's columns: C's layout is A's, two n8 tiles at a time.
template <class T, int NT>
__device__ __forceinline__ void accumulator_to_a(uint32_t (&a)[NT / 2][4], const float (&c)[NT][4]) {
  static_assert(NT % 2 == 0, "an even number of n8 tiles forms whole k16 slices");
#pragma unroll
  for (int kt = 0; kt < NT / 2; ++kt) {
    a[kt][0] = pack2<T>(c[2 * kt][0], c[2 * kt][1]);
    a[kt][1] = pack2<T>(c[2 * kt][2], c[2 * kt][3]);
    a[kt][2] = pack2<T>(c[2 * kt + 1][0], c[2 * kt + 1][1]);
    a[kt][3] = pack2<T>(c[2 * kt + 1][2], c[2 * kt + 1][3]);
  }
}

// Zero an accumulator of any shape.
template <int N>
__device__ __forceinline__ void zero(float (&c)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) c[i] = 0.0f;
}
template <int N, int M>
__device__ __forceinline__ void zero(float (&c)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i) zero(c[i]);
}
template <int N, int M, int L>
__device__ __forceinline__ void zero(float (&c)[N][M][L]) {
#pragma unroll
  for (int i = 0; i < N; ++i) zero(c[i]);
}

}  // namespace fg
