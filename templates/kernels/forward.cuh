// The forward pass (FlashAttention-2): one CTA per (BM query rows, batch * head).
//
// The Q tile stays in shared memory; K/V tiles stream through two shared-memory stages
// with cp.async, the next tile landing while this one computes. Each of the W warps
// owns 16 query rows: S = Q K^T (16 x BN) lives in registers, goes through the spec's
// score and mask, the online softmax turns it into P, and P (re-packed as A fragments,
// never written out) multiplies the V tile into the output accumulator. O is scaled by
// 1 / rowsum once at the end and written with lse; nothing N x N touches memory.
#pragma once
#include "args.cuh"
#include "dropout.cuh"
#include "schedule.cuh"
#include "mask.cuh"
#include "mma.cuh"
#include "softmax.cuh"

namespace fg {

template <int D, int Dv, int BM, int BN, int W>
struct ForwardTiles {
  static constexpr int kThreads = 32 * W;
  static constexpr int kLdQK = D + kSmemPad, kLdV = Dv + kSmemPad;
  static constexpr int kQ = BM * kLdQK, kK = BN * kLdQK, kV = BN * kLdV;  // elements
  template <class V, class T>
  using Stream = KvStream<V, T, D, Dv, BM, BN, kThreads>;
  template <class T>
  static constexpr int smem_bytes() { return (kQ + 2 * (kK + kV)) * int(sizeof(T)); }
  static_assert(BM == 16 * W, "each warp owns 16 query rows");
  static_assert(BN % 16 == 0 && D % 16 == 0 && Dv % 16 == 0, "tiles are whole k16 slices");
};

// kDropout: the spec has dropout and this call's p > 0 (p = 0 runs the kernel without).
template <class V, class T, int D, int Dv, int BM, int BN, int W, bool kDropout>
__global__ void __launch_bounds__(32 * W, 1)
forward_kernel(const ForwardArgs<T> a, const typename V::Params p) {
  using Tiles = ForwardTiles<D, Dv, BM, BN, W>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);

  const Shape& n = a.shape;
  // the last query tiles first: under a causal mask they have the most work
  const int m_block = gridDim.x - 1 - blockIdx.x;
  const int b = blockIdx.y / n.heads, h = blockIdx.y % n.heads;
  const int hk = h / (n.heads / n.kv_heads);  // GQA: the K/V head this query head reads
  const int q0 = m_block * BM;
  const int warp = threadIdx.x >> 5;
  const int kv_tiles = (n.kv_len + BN - 1) / BN;
  T* sK = sQ + Tiles::kQ;     // [2][BN][D + pad]
  T* sV = sK + 2 * Tiles::kK;  // [2][BN][Dv + pad]
  const typename Tiles::template Stream<V, T> kv{
      sK, sV, p, n, a.sparse, a.k, a.v, b, h, hk, q0,
      tile_row<V>(a.sparse.by_q, h, m_block, kv_tiles)};

  load_tile<BM, D, Tiles::kThreads>(sQ, a.q.at(b, h, q0), a.q.row, n.q_len - q0, a.q.data);

  float o[Dv / 8][4];
  zero(o);
  OnlineSoftmax<BN / 8> softmax;
  const int row0 = q0 + 16 * warp;
  kv.for_each([&](int k0, TileMask tile, const T* sK_tile, const T* sV_tile) {
    float s[1][BN / 8][4];
    zero(s);
    warp_gemm<1, BN / 8, D, false, false>(s, sQ, Tiles::kLdQK, 16 * warp, sK_tile, Tiles::kLdQK, 0);
    // scores in log2 units, after the spec's score expression and mask
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      const int q = row0 + (lane >> 2), kv = k0 + 8 * nt + 2 * (lane & 3);
      const bool block = fragment_block_visible<V>(tile, a.sparse, h, q, kv, n.q_len, n.kv_len);
#pragma unroll
      for (int i = 0; i < 4; ++i) {  // rows q, q, q + 8, q + 8; columns kv, kv + 1, kv, kv + 1
        float& x = s[0][nt][i];
        const int qi = q + 8 * (i >> 1), kvi = kv + (i & 1);
        if constexpr (V::kHasScore) {
          x = V::score(p, x * n.scale, b, h, qi, kvi, n.q_len, n.kv_len) * kLog2e;
        } else {
          x *= n.scale_log2;
        }
        if (!visible<V>(tile, p, block, b, h, qi, kvi, n.q_len, n.kv_len)) x = -inf();
      }
    }
    float alpha[2];
    softmax.step(s[0], alpha);  // the row sums count every visible key, dropped or not
    if constexpr (kDropout) {   // P -> P * keep; 1 / (1 - p) is applied with 1 / rowsum
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        float keep[4];
        dropout_factors(a.dropout, blockIdx.y, row0 + (lane >> 2), k0 + 8 * nt + 2 * (lane & 3),
                        keep);
#pragma unroll
        for (int i = 0; i < 4; ++i) s[0][nt][i] = keep[i] != 0.0f ? s[0][nt][i] : 0.0f;
      }
    }
#pragma unroll
    for (int dt = 0; dt < Dv / 8; ++dt) {
      o[dt][0] *= alpha[0];
      o[dt][1] *= alpha[0];
      o[dt][2] *= alpha[1];
      o[dt][3] *= alpha[1];
    }
    uint32_t pa[BN / 16][4];
    accumulator_to_a<T>(pa, s[0]);
    warp_gemm_rA<BN / 16, Dv / 8, true>(o, pa, sV_tile, Tiles::kLdV, 0);
  });

  float inv_sum[2], lse[2];
  softmax.finish(inv_sum, lse);
  if constexpr (kDropout) {
    inv_sum[0] *= a.dropout.keep_scale;
    inv_sum[1] *= a.dropout.keep_scale;
  }
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int q = row0 + g + 8 * r;
    if (q >= n.q_len) continue;
    T* out = a.out.at(b, h, q);
#pragma unroll
    for (int dt = 0; dt < Dv / 8; ++dt) {
      *reinterpret_cast<uint32_t*>(out + 8 * dt + 2 * t) =
          pack2<T>(o[dt][2 * r] * inv_sum[r], o[dt][2 * r + 1] * inv_sum[r]);
    }
    if (t == 0) a.lse[(int64_t(b) * n.heads + h) * n.q_len + q] = lse[r];
  }
}

}  // namespace fg
