// The forward pass (FlashAttention-2): one CTA per (BM query rows, batch * head).
//
// The Q tile stays in shared memory; K/V tiles stream through two shared-memory stages
// with cp.async, the next tile landing while this one computes. Each of the W warps
// owns MT m16 tiles (16 * MT query rows): S = Q K^T (16 MT x BN) lives in registers,
// goes through the spec's score and mask, the online softmax turns it into P, and P
// (re-packed as A fragments, never written out) multiplies the V tile into the output
// accumulator. With MT = 2 every K/V fragment read from shared memory feeds two MMAs,
// which halves the shared-memory traffic per MMA (PERF.md). O is scaled by 1 / rowsum
// once at the end and written with lse; nothing N x N touches memory.
#pragma once
#include "args.cuh"
#include "launch.cuh"
#include "dropout.cuh"
#include "schedule.cuh"
#include "mask.cuh"
#include "mma.cuh"
#include "softmax.cuh"

namespace fg {

template <int D, int Dv, int BM, int BN, int W>
struct ForwardTiles {
  static constexpr int kThreads = 32 * W;
  static constexpr int kMTiles = BM / (16 * W);  // m16 tiles per warp
  // Up to 4 warps the register budget (255) allows two CTAs per SM: two CTAs of 4 warps
  // hide each other's barriers and softmax better than one CTA of 8.
  static constexpr int kMinBlocksPerSM = W <= 4 ? 2 : 1;
  static constexpr int kLdQK = D + kSmemPad, kLdV = Dv + kSmemPad;
  static constexpr int kQ = BM * kLdQK, kK = BN * kLdQK, kV = BN * kLdV;  // elements
  template <class V, class T, bool kGeneral>
  using Stream = KvStream<V, T, D, Dv, BM, BN, kThreads, kGeneral>;
  template <class T>
  static constexpr int smem_bytes() { return (kQ + 2 * (kK + kV)) * int(sizeof(T)); }
  static_assert(BM % (16 * W) == 0, "each warp owns whole m16 tiles of query rows");
  static_assert(BN % 16 == 0 && D % 16 == 0 && Dv % 16 == 0, "tiles are whole k16 slices");
};

// What turns score_and_mask's output into log2 units: the scale and log2(e), or log2(e)
// alone after a score expression (it applied the scale). A zero scale runs as 1e-30 so
// that a masked score stays -inf (0 * inf would be NaN); every score is then ~0. An affine
// bias (below) leaves the scale to the softmax, as a spec without a score does.
template <class V>
__device__ __forceinline__ float score_mult(const Shape& n) {
  if constexpr (V::kHasScore && !V::kAffineBias) return kLog2e;
  return n.scale_log2 != 0.0f ? n.scale_log2 : 1e-30f;
}

// V::kAffineBias (score = score + bias, the bias affine in kv_idx; analysis/affine.py),
// after score_and_mask's mask. The bias is taken once per row at the thread's first
// column of the tile and goes to row_offset (log2 units), which the softmax adds in its
// exponent's FFMA; a score gets only the bias's growth over its column offset c
// (8 nt + i % 2, a constant), in the softmax's units: x + c * bias_step / scale, one
// FFMA. (ALiBi's per-element form was an integer subtraction, a conversion, a multiply
// and an add; PERF.md.) A masked score stays -inf. The offset differs between the four
// threads of a row, so the softmax adds it before the row's shuffles.
template <class V, int MT, int NT>
__device__ __forceinline__ void add_affine_bias(float (&s)[MT][NT][4], float (&row_offset)[MT][2],
                                                const typename V::Params& p, const Shape& n,
                                                int b, int h, int row0, int k0) {
  const int lane = threadIdx.x & 31;
  // (a fast divide: IEEE division's slow-path call costs registers around it)
  const float to_x = __fdividef(kLog2e, score_mult<V>(n));
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = row0 + 16 * mt + 8 * r + (lane >> 2), kv = k0 + 2 * (lane & 3);
      row_offset[mt][r] = V::bias(p, b, h, q, kv, n.q_len, n.kv_len) * kLog2e;
      if constexpr (V::kBiasVaries) {
        const float step = V::bias_step(p, b, h, q, kv, n.q_len, n.kv_len) * to_x;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {  // columns 8 nt + j of this thread
            const int c = 8 * nt + j;
            if (c != 0) s[mt][nt][2 * r + j] = fmaf(step, float(c), s[mt][nt][2 * r + j]);
          }
        }
      }
    }
  }
}

// A warp's S tile -> scores after the spec's score expression and mask, not yet in log2
// units: the softmax multiplies by score_mult<V>() in its exponent (softmax.cuh).
// kPartial: the tile needs the per-element mask. The caller branches once per tile, so
// full tiles run code with no mask in it (a per-element test of the tile class made
// nvcc emit a branch per element). An affine bias is added after the mask, once the
// mask's per-row and per-column parts are dead (before it, ptxas spilled in a spec with
// both).
template <bool kPartial, class V, int MT, int NT>
__device__ __forceinline__ void score_and_mask(float (&s)[MT][NT][4],
                                               float (&row_offset)[MT][2],
                                               const typename V::Params& p, const Shape& n,
                                               const BlockSparseArgs& sparse, TileMask tile,
                                               int b, int h, int row0, int k0) {
  const int lane = threadIdx.x & 31;
  // (an affine bias's kernels take a positive scale only: softmax.cuh)
  const float masked = V::kAffineBias ? -inf() : masked_score(score_mult<V>(n));
  // unused (and gone from the code) in full tiles
  const FragmentMask<V, MT, NT> mask(p, b, h, row0 + (lane >> 2), k0 + 2 * (lane & 3), n.q_len,
                                     n.kv_len);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int q = row0 + 16 * mt + (lane >> 2), kv = k0 + 8 * nt + 2 * (lane & 3);
      bool block = true;
      if constexpr (kPartial)
        block = fragment_block_visible<V>(tile, sparse, h, q, kv, n.q_len, n.kv_len);
#pragma unroll
      for (int i = 0; i < 4; ++i) {  // rows q, q, q + 8, q + 8; columns kv, kv + 1, kv, kv + 1
        float& x = s[mt][nt][i];
        const int qi = q + 8 * (i >> 1), kvi = kv + (i & 1);
        if constexpr (V::kHasScore && !V::kAffineBias)
          x = V::score(p, x * n.scale, b, h, qi, kvi, n.q_len, n.kv_len);
        if constexpr (kPartial) {
          if (!mask.visible(p, block, b, h, mt, nt, i, qi, kvi, n.q_len, n.kv_len)) x = masked;
        }
      }
    }
  }
  if constexpr (V::kAffineBias) add_affine_bias<V>(s, row_offset, p, n, b, h, row0, k0);
}

// After score_and_mask: the online softmax of a warp's MT m16 row tiles (leaving P in s)
// and dropout's zeros; alpha gets, per row, the factor the output accumulated so far must
// be scaled by (rescale_output). The row sums count every visible key, dropped or not;
// 1 / (1 - p) is applied with 1 / rowsum at the end. bh (batch * heads + head) picks the
// dropout stream; it is not blockIdx.y in a persistent CTA, which loops over heads.
// Apart from the rescale so that a kernel can run it while the previous tile's P V still
// accumulates into the output (forward_sm90_ws.cuh).
template <bool kDropout, class V, int MT, int NT>
__device__ __forceinline__ void softmax_probabilities(float (&s)[MT][NT][4],
                                                      const float (&row_offset)[MT][2],
                                                      OnlineSoftmax<NT> (&softmax)[MT],
                                                      float (&alpha)[MT][2], const Shape& n,
                                                      const Dropout& dropout, int bh, int row0,
                                                      int k0) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    softmax[mt].template step<V::kAffineBias>(s[mt], score_mult<V>(n), row_offset[mt],
                                              alpha[mt]);
    if constexpr (kDropout) {  // P -> P * keep
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        float keep[4];
        dropout_factors(dropout, bh, row0 + 16 * mt + (lane >> 2),
                        k0 + 8 * nt + 2 * (lane & 3), keep);
#pragma unroll
        for (int i = 0; i < 4; ++i) s[mt][nt][i] = keep[i] != 0.0f ? s[mt][nt][i] : 0.0f;
      }
    }
  }
}

template <int MT, int DT>
__device__ __forceinline__ void rescale_output(float (&o)[MT][DT][4], const float (&alpha)[MT][2]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      o[mt][dt][0] *= alpha[mt][0];
      o[mt][dt][1] *= alpha[mt][0];
      o[mt][dt][2] *= alpha[mt][1];
      o[mt][dt][3] *= alpha[mt][1];
    }
  }
}

// Both: the step of a kernel whose output is not being accumulated meanwhile.
template <bool kDropout, class V, int MT, int NT, int DT>
__device__ __forceinline__ void softmax_tile(float (&s)[MT][NT][4],
                                             const float (&row_offset)[MT][2],
                                             float (&o)[MT][DT][4],
                                             OnlineSoftmax<NT> (&softmax)[MT], const Shape& n,
                                             const Dropout& dropout, int bh, int row0,
                                             int k0) {
  float alpha[MT][2];
  softmax_probabilities<kDropout, V>(s, row_offset, softmax, alpha, n, dropout, bh, row0, k0);
  rescale_output(o, alpha);
}

// After the last tile: O / rowsum and lse to memory, rows past the end left out. A split
// (split-KV) writes its normalised partial O and lse in fp32 for combine_kernel; a training
// call with dropout or a table's gradient also writes O in fp32 (out_f32) for the
// backward's delta (runtime/launch.py SAVE_*). Serves both
// kernel families: their accumulators share mma.sync's fragment layout (wgmma.cuh).
// A row's output scale (1 / rowsum, times dropout's 1 / (1 - p)) and lse, this thread's
// two rows of one m16 tile: store_output's and the staged epilogue's (forward_sm90_ws.cuh)
template <bool kDropout, class T, int NT>
__device__ __forceinline__ void output_row_scales(const OnlineSoftmax<NT>& softmax,
                                                  const ForwardArgs<T>& a, float (&inv_sum)[2],
                                                  float (&lse)[2]) {
  softmax.finish(inv_sum, lse);
  if constexpr (kDropout) {
    inv_sum[0] *= a.dropout.keep_scale;
    inv_sum[1] *= a.dropout.keep_scale;
  }
}

// Query row q of (b, h) among lse's and the fp32 O's rows
template <bool kGeneral>
__device__ __forceinline__ int64_t output_row(const Shape& n, int b, int h, int q) {
  return kGeneral ? n.row(b, h, q) : (int64_t(b) * n.heads + h) * n.q_len + q;
}

template <bool kDropout, bool kGeneral, class T, int MT, int DT, int NT>
__device__ __forceinline__ void store_output(const float (&o)[MT][DT][4],
                                             const OnlineSoftmax<NT> (&softmax)[MT],
                                             const ForwardArgs<T>& a, const Shape& n, int b, int h,
                                             int row0) {
  constexpr int Dv = 8 * DT;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float inv_sum[2], lse[2];
    output_row_scales<kDropout>(softmax[mt], a, inv_sum, lse);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = row0 + 16 * mt + g + 8 * r;
      if (q >= n.q_len) continue;
      const int64_t at = output_row<kGeneral>(n, b, h, q);
      if (kGeneral && a.splits > 1) {  // a partial result: fp32, merged by combine_kernel
        const int64_t part = int64_t(blockIdx.z) * n.rows() + at;
        float* out = a.partial_out + part * Dv;
#pragma unroll
        for (int dt = 0; dt < Dv / 8; ++dt) {
          *reinterpret_cast<float2*>(out + 8 * dt + 2 * t) =
              make_float2(o[mt][dt][2 * r] * inv_sum[r], o[mt][dt][2 * r + 1] * inv_sum[r]);
        }
        if (t == 0) a.partial_lse[part] = lse[r];
        continue;
      }
      T* out = a.out.at(b, h, kGeneral ? n.q_start + q : q);
      float* out_f32 = a.out_f32 ? a.out_f32 + at * Dv : nullptr;
#pragma unroll
      for (int dt = 0; dt < Dv / 8; ++dt) {
        const float x = o[mt][dt][2 * r] * inv_sum[r], y = o[mt][dt][2 * r + 1] * inv_sum[r];
        *reinterpret_cast<uint32_t*>(out + 8 * dt + 2 * t) = pack2<T>(x, y);
        if (out_f32) *reinterpret_cast<float2*>(out_f32 + 8 * dt + 2 * t) = make_float2(x, y);
      }
      if (t == 0) a.lse[at] = lse[r];
    }
  }
}

// Where a forward CTA works, for both kernel families: its Q tile (the last ones first:
// under a causal mask they have the most work), batch, head, the K/V head of its GQA
// group, and its sequence: for kGeneral (packed batches) the CTA's own lengths and Q/K/V
// from its first rows. Held by value so that the K/V stream's references bind to it.
template <class T, bool kGeneral>
struct ForwardCta {
  int m_block, b, h, hk, q0;
  Shape sequence;  // kGeneral only; use shape()
  Strided4<const T> q, k, v;

  __device__ __forceinline__ ForwardCta(const ForwardArgs<T>& a, int block_m)
      : ForwardCta(a, block_m, gridDim.x - 1 - blockIdx.x, blockIdx.y) {}
  // Q tile m_block of (batch, head) bh: a persistent CTA's unit of work
  __device__ __forceinline__ ForwardCta(const ForwardArgs<T>& a, int block_m, int m_block, int bh)
      : ForwardCta(a, block_m, m_block, bh / a.shape.heads, bh % a.shape.heads,
                   bh % a.shape.heads / (a.shape.heads / a.shape.kv_heads)) {}
  // ... of batch b, head h and KV head hk (a persistent unit's card: forward_sm90_ws.cuh)
  __device__ __forceinline__ ForwardCta(const ForwardArgs<T>& a, int block_m, int m_block, int b,
                                        int h, int hk)
      : m_block(m_block),
        b(b),
        h(h),
        hk(hk),
        q0(m_block * block_m),
        sequence(kGeneral ? a.shape.for_sequence(b) : Shape{}),
        q(kGeneral ? a.q.from_row(sequence.q_start) : a.q),
        k(kGeneral ? a.k.from_row(sequence.kv_start) : a.k),
        v(kGeneral ? a.v.from_row(sequence.kv_start) : a.v) {}
  __device__ __forceinline__ const Shape& shape(const ForwardArgs<T>& a) const {
    return kGeneral ? sequence : a.shape;
  }
  // the CTA's row of candidate K/V tiles; a split (split-KV) takes its part of it
  // (of BM query rows from q0), cut to the keys the mask's comparisons leave (trim_row)
  template <class V, int BM, int BN>
  __device__ __forceinline__ TileRow tiles(const ForwardArgs<T>& a, const typename V::Params& p,
                                           const Shape& n) const {
    const TileRow row =
        cut_to_keys<V>(tile_row<V>(a.sparse.by_q, b, h, m_block, (n.kv_len + BN - 1) / BN), p,
                       b, h, q0, BM, BN, n.q_len, n.kv_len);
    return kGeneral && a.splits > 1 ? row.split(blockIdx.z, a.splits) : row;
  }
};

// kDropout: the spec has dropout and this call's p > 0 (p = 0 runs the kernel without).
// kExactP: P V also multiplies what rounding P to T lost (a second MMA), so that O in
// fp32 is P V with P close to the fp32 P the backward pass recomputes. Close, not exact:
// the residual is itself rounded to T, leaving ~2^-18 of P in bf16; in fp16 ~2^-24, an
// absolute 2^-24 once the residual is subnormal (P below ~1/8). Either is far below the
// bf16 reference's error, which is what the oracle's bound is made of. The gradient of a float
// parameter sums dS = P (dP - delta) over whole rows, where delta = rowsum(dO * O) must
// equal rowsum(P * dP) for the rows' errors to cancel; with P rounded to bf16 in P V it
// missed by 2^-9 relative, which a parameter multiplying every score of a head (a
// temperature) turned into twice the error of the bf16 reference (backward.cuh
// delta_kernel). Only calls that want such gradients pay for it (launch.py SAVE_*).
// kGeneral: a packed (varlen) batch, a paged KV cache or split-KV. Their per-CTA work (the sequence's
// Shape, offsets, a part of the row, the partial-output epilogue) cost the padded one-CTA
// forward 8-11 % when it was always compiled in (PERF.md step 13), so the padded path is
// an instance without it.
template <class V, class T, int D, int Dv, int BM, int BN, int W, bool kDropout, bool kExactP,
          bool kGeneral>
__global__ void __launch_bounds__(32 * W, (ForwardTiles<D, Dv, BM, BN, W>::kMinBlocksPerSM))
forward_kernel(const ForwardArgs<T> a, const typename V::Params p) {
  using Tiles = ForwardTiles<D, Dv, BM, BN, W>;
  // split-KV: the combine kernel, launched as this one's dependent, may take its place on
  // the SMs as soon as every CTA is here (launch.cuh); it waits for this grid's end to read
  if constexpr (kGeneral) allow_dependent_launch();
  constexpr int MT = Tiles::kMTiles;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);

  const ForwardCta<T, kGeneral> cta(a, BM);
  const Shape& n = cta.shape(a);
  const int b = cta.b, h = cta.h, q0 = cta.q0;
  if (kGeneral && q0 >= n.q_len) return;  // varlen: past a shorter sequence's rows
  const int warp = threadIdx.x >> 5;
  T* sK = sQ + Tiles::kQ;     // [2][BN][D + pad]
  T* sV = sK + 2 * Tiles::kK;  // [2][BN][Dv + pad]
  const typename Tiles::template Stream<V, T, kGeneral> kv{
      sK, sV, p, n, a.sparse, cta.k, cta.v, b, h, cta.hk, q0, cta.template tiles<V, BM, BN>(a, p, n)};

  load_tile<BM, D, Tiles::kThreads>(sQ, cta.q.at(b, h, q0), a.q.row, n.q_len - q0, a.q.data);

  float o[MT][Dv / 8][4];
  zero(o);
  OnlineSoftmax<BN / 8> softmax[MT];
  const int row0 = q0 + 16 * MT * warp;  // this warp's first query row
  kv.for_each([&](int k0, TileMask tile, const T* sK_tile, const T* sV_tile) {
    float s[MT][BN / 8][4];
    zero(s);
    float row_offset[MT][2];  // V::kAffineBias (score_and_mask)
    warp_gemm<MT, BN / 8, D, false, false>(s, sQ, Tiles::kLdQK, 16 * MT * warp, sK_tile,
                                           Tiles::kLdQK, 0);
    if (tile.partial()) {
      score_and_mask<true, V>(s, row_offset, p, n, a.sparse, tile, b, h, row0, k0);
    } else {
      score_and_mask<false, V>(s, row_offset, p, n, a.sparse, tile, b, h, row0, k0);
    }
    softmax_tile<kDropout, V>(s, row_offset, o, softmax, n, a.dropout, b * a.shape.heads + h,
                              row0, k0);
    uint32_t pa[MT][BN / 16][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) accumulator_to_a<T>(pa[mt], s[mt]);
    if constexpr (kExactP) {
      uint32_t pa_lost[MT][BN / 16][4];  // packed before the first MMA: s dies here
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) s[mt][nt][i] = rounding_residual<T>(s[mt][nt][i]);
        }
        accumulator_to_a<T>(pa_lost[mt], s[mt]);
      }
      warp_gemm_rA<MT, BN / 16, Dv / 8, true>(o, pa, sV_tile, Tiles::kLdV, 0);
      warp_gemm_rA<MT, BN / 16, Dv / 8, true>(o, pa_lost, sV_tile, Tiles::kLdV, 0);
    } else {
      warp_gemm_rA<MT, BN / 16, Dv / 8, true>(o, pa, sV_tile, Tiles::kLdV, 0);
    }
  });

  store_output<kDropout, kGeneral>(o, softmax, a, n, b, h, row0);
}

}  // namespace fg
