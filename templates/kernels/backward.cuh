// The backward pass (FlashAttention-2), by recomputation from Q, K, V, dO, lse and
// delta = rowsum(dO * O) (delta_kernel, first): one CTA per (BN keys, batch * KV head).
//
// The CTA keeps its K and V tiles in shared memory and its dK, dV accumulators in
// registers, and walks every (query head of its GQA group, Q tile) that the mask does
// not skip, with the next Q/dO tile landing (cp.async) while this one computes:
//   1. S = Q K^T and dP = dO V^T                          (warps split rows x keys)
//   2. P = exp2(score(S) - lse), dT = P (dP * Z - delta), dS = dT * dscore/dS, with Z
//      the dropout factor (0 or 1 / (1 - p), drawn again as the forward pass drew it);
//      P * Z and dS go to shared memory; float tensor parameters of the score get
//      dT * dscore/dparam.
//   3. dV += P^T dO and dK += dS^T Q                      (warps split keys x columns)
//   4. dQ += dS K, added to an fp32 buffer with atomics   (warps split rows x columns)
// Looping over the group's query heads inside the CTA sums GQA's dK/dV in registers.
// A block-sparse spec walks its KV tile's list of Q tiles (sparse.cuh) instead of all.
#pragma once
#include "args.cuh"
#include "copy.cuh"
#include "dropout.cuh"
#include "schedule.cuh"
#include "mask.cuh"
#include "mma.cuh"
#include "softmax.cuh"

namespace fg {

// delta = rowsum(dO * O) - dlse, one warp per query row, in fp32. A gradient flowing
// into lse enters dS as P * dlse, the same as lowering delta by it.
//
// delta stands for rowsum(P * dP), which the exact gradient cancels against: every dS of
// the row carries its error, and a parameter's gradient sums them, so O's rounding to
// fp16/bf16 showed as a 1000x error in a head slope's gradient (a per-head constant
// shift, whose exact gradient cancels to ~0). The forward pass keeps O in fp32 for
// such calls and under dropout (out_f32); dq / dk / dv alone read O in the input dtype,
// as FlashAttention and cuDNN (runtime/launch.py SAVE_*).
//
// It also zeroes the fp32 dQ accumulator that the backward kernel's atomics (or bulk
// reductions) add into, BM x D floats per tile (dq_accum_tiles), where the host used to
// fill it with a separate kernel: that write pass cost as much as this kernel's reads
// (60 us of a 1.4 ms causal forward+backward at d = 128, N = 2048; PERF.md, issue 8's
// sixteenth step), and here its stores overlap the loads.
// The fp32 dQ accumulator's tiles of BM rows (DqFragments::tile): a padded batch's
// [B, H, Nq rounded up to BM], a packed batch's [H, total_q / BM + B + 1] (each sequence
// starts a fresh tile). dq_accum_row_tiles: those of one (batch, head), or of one head.
// runtime/launch.py sizes the buffer by the same rule.
template <int BM>
__host__ __device__ __forceinline__ int64_t dq_accum_row_tiles(const Shape& n) {
  return n.varlen() ? n.q_rows / BM + n.batch + 1 : (n.q_len + BM - 1) / BM;
}
template <int BM>
__host__ __device__ __forceinline__ int64_t dq_accum_tiles(const Shape& n) {
  return int64_t(n.varlen() ? 1 : n.batch) * n.heads * dq_accum_row_tiles<BM>(n);
}

template <class T, int Dv, int BM, int D>
__global__ void __launch_bounds__(256)
delta_kernel(const BackwardArgs<T> a) {
  const Shape& n = a.shape;
  if (a.dq_accum) {  // (the deterministic mode has none)
    const int64_t chunks = dq_accum_tiles<BM>(n) * (BM * D / 4);
    float4* const accum = reinterpret_cast<float4*>(a.dq_accum);
    for (int64_t i = int64_t(blockIdx.x) * 256 + threadIdx.x; i < chunks;
         i += int64_t(gridDim.x) * 256)
      accum[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  const int64_t row = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);  // over Shape::row's rows
  if (row >= n.rows()) return;
  // a packed batch's rows are [H, total_q], its tensors have batch stride 0: b = 0
  const int q = int(row % n.q_rows), bh = int(row / n.q_rows);
  const int b = bh / n.heads, h = bh % n.heads;
  const T* dout = a.dout.at(b, h, q);
  float sum = 0.0f;
  if (a.out_f32) {
    const float* out = a.out_f32 + row * Dv;
    for (int c = threadIdx.x & 31; c < Dv; c += 32) sum += float(dout[c]) * out[c];
  } else {
    const T* out = a.out.at(b, h, q);
    for (int c = threadIdx.x & 31; c < Dv; c += 32) sum += float(dout[c]) * float(out[c]);
  }
#pragma unroll
  for (int lanes = 16; lanes > 0; lanes >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, lanes);
  if ((threadIdx.x & 31) == 0) a.delta[row] = sum - (a.dlse ? a.dlse[row] : 0.0f);
}

// How W warps split an R x C block of a GEMM's output. A warp with an r x c block reads
// (r + c) x k operand elements from shared memory for r x c x k MACs, so the split
// makes each warp's block as square as the m16 / n8 granularity allows (on a tie,
// fewer columns per warp: fewer B fragments in flight). The backward's GEMMs are bound
// by shared memory, not the tensor cores (PERF.md): 64 x 128 tiles on 8 warps as
// 2 x 4 blocks of 32 x 32 read 20 % less than 4 x 2 blocks of 16 x 64.
template <int R, int C, int W>
struct WarpSplit {
  static constexpr int row_warps() {
    int best = 0, best_reads = 1 << 30;
    for (int rows = 1; rows <= W; ++rows) {
      if (W % rows != 0 || (R / 16) % rows != 0 || (C / 8) % (W / rows) != 0) continue;
      const int reads = R / rows + C / (W / rows);
      if (reads <= best_reads) best = rows, best_reads = reads;
    }
    return best;
  }
  static constexpr int kRowWarps = row_warps();
  static_assert(kRowWarps > 0, "the warps must tile the block exactly");
  static constexpr int kColWarps = W / kRowWarps;
  static constexpr int kMT = R / 16 / kRowWarps;  // m16 tiles per warp
  static constexpr int kNT = C / 8 / kColWarps;   // n8 tiles per warp
  static __device__ __forceinline__ int row0(int warp) { return (warp % kRowWarps) * 16 * kMT; }
  static __device__ __forceinline__ int col0(int warp) { return (warp / kRowWarps) * 8 * kNT; }
};

template <int D, int Dv, int BM, int BN, int W, int Stages>
struct BackwardTiles {
  static constexpr int kThreads = 32 * W;
  static constexpr int kLdQK = D + kSmemPad, kLdV = Dv + kSmemPad, kLdP = BN + kSmemPad;
  static constexpr int kK = BN * kLdQK, kV = BN * kLdV, kQ = BM * kLdQK, kDO = BM * kLdV;
  static constexpr int kP = BM * kLdP;
  // after the T tiles: lse and delta of each stage's BM rows, fp32
  static constexpr int kRowStats = Stages * 2 * BM * int(sizeof(float));
  template <class T>
  static constexpr int smem_bytes() {
    return (kK + kV + Stages * (kQ + kDO) + 2 * kP) * int(sizeof(T)) + kRowStats;
  }
  using Scores = WarpSplit<BM, BN, W>;   // S, dP
  using KeysK = WarpSplit<BN, D, W>;     // dK
  using KeysV = WarpSplit<BN, Dv, W>;    // dV
  using Rows = WarpSplit<BM, D, W>;      // dQ
};

// A row's lse in log2 units as score_gradient takes it: +inf for a row past the
// sequence or with no visible key (lse = -inf), so that its P = exp2(x - lse2) is 0.
__device__ __forceinline__ float row_lse2(float lse, bool in_sequence) {
  return in_sequence && lse != -inf() ? lse * kLog2e : inf();
}

// The per-thread sums of a variant's tile-uniform parameter gradients (variant.cuh
// GradSums; empty without parameter gradients).
template <class V, bool = V::kHasParamGrads>
struct GradSumsOf {
  struct type {};
};
template <class V>
struct GradSumsOf<V, true> {
  using type = typename V::GradSums;
};

// Step 2 for one element of a score that is the raw score plus `offset2`, a bias in log2
// units (0 without a score expression; an affine bias taken once per row and tile,
// backward_sm90.cuh) with -lse2 folded in: P = exp2(s scale log2(e) + offset2), dS = dT
// = P (dP * keep - delta), since d score / d score is 1. The rest as score_gradient's.
template <bool kPartial>
__device__ __forceinline__ void offset_score_gradient(const Shape& n, bool visible, float offset2,
                                                      float delta, float s, float dp, float keep,
                                                      float& prob, float& ds) {
  float pr = fast_exp2(fmaf(s, n.scale_log2, offset2));
  if constexpr (kPartial) {
    if (!visible) pr = 0.0f;
  }
  ds = pr * (dp * keep - delta);
  prob = pr * keep;
}

// Step 2 for one element (q, kv): P from the saved lse, then dT = P (dP * keep - delta)
// and dS = dT * dscore/dS, both w.r.t. the scaled score sx; `keep` is the element's
// dropout factor (1 without dropout). prob returns P * keep, the probability that
// multiplied V. With kParamGrads, the score's float tables get dT * dscore/dtable.
// kPartial: the tile needs the per-element mask, and `visible` is the element's
// (FragmentMask); callers branch once per tile, so full tiles carry no mask code. The
// scale rides in the exponent's FFMA.
template <class V, bool kPartial, bool kParamGrads>
__device__ __forceinline__ void score_gradient(const typename V::Params& p,
                                               const typename V::Grads& g,
                                               typename GradSumsOf<V>::type& sums, const Shape& n,
                                               bool visible, float lse2, float delta,
                                               int b, int h, int q, int kv, float s, float dp,
                                               float keep, float& prob, float& ds) {
  if constexpr (!V::kHasScore) {
    offset_score_gradient<kPartial>(n, visible, -lse2, delta, s, dp, keep, prob, ds);
  } else {
    const float sx = s * n.scale;
    float pr = fast_exp2(fmaf(V::score(p, sx, b, h, q, kv, n.q_len, n.kv_len), kLog2e, -lse2));
    if constexpr (kPartial) {
      if (!visible) pr = 0.0f;
    }
    const float dt = pr * (dp * keep - delta);
    prob = pr * keep;
    ds = dt;
    if (pr != 0.0f) ds *= V::score_grad(p, sx, b, h, q, kv, n.q_len, n.kv_len);
    if constexpr (kParamGrads && V::kHasParamGrads) {
      if (pr != 0.0f) V::add_param_grads(p, g, sums, dt, sx, b, h, q, kv, n.q_len, n.kv_len);
    }
  }
}

// dQ of the atomic path: every KV tile's CTA adds its dS K to an fp32 buffer, which
// holds each (head, Q tile) as a BM x D block (the host pads the rows to whole tiles)
// in the order of the warps' MMA fragments, not row-major. A warp's atomic instruction
// then covers 32 consecutive floats (sm_90: 32 float4, one red.v4 per lane). Row-major,
// it touched 8 rows x 16 bytes: twice the L2 sectors, half of each unused (ncu: the
// backward's L2 was 74 % busy, FA2's, which does the same, 31 %). dq_convert_kernel
// puts the rows back in order, scaled, in T.
template <class Rows, int BM, int D>
struct DqFragments {
  static constexpr int kPerWarp = Rows::kMT * Rows::kNT * 4 * 32;  // floats
#if __CUDA_ARCH__ >= 900
  static constexpr bool kVector = true;   // lane l's 4 values side by side: one float4 atomic
#else
  static constexpr bool kVector = false;  // value i of all 32 lanes side by side
#endif
  // Tile q0 / BM of sequence b's rows at head h. Padded batch: [B, H, Nq rounded up to BM,
  // D]. Packed: [H, (total_q / BM + B + 1) * BM, D], sequence b's tiles from
  // cu_q[b] / BM + b on: each starts a fresh tile, and no two overlap (launch.py sizes it).
  template <class T>
  static __device__ __forceinline__ float* tile(const BackwardArgs<T>& a, const Shape& n, int b,
                                                int h, int q0) {
    const int64_t index =
        n.varlen() ? h * dq_accum_row_tiles<BM>(n) + n.q_start / BM + b + q0 / BM
                   : (int64_t(b) * n.heads + h) * dq_accum_row_tiles<BM>(n) + q0 / BM;
    return a.dq_accum + index * BM * D;
  }
  // value i of fragment (mt, nt) of `lane` in warp `warp`'s part
  static __device__ __forceinline__ int offset(int warp, int mt, int nt, int i, int lane) {
    const int f = mt * Rows::kNT + nt;
    return warp * kPerWarp + (kVector ? (f * 32 + lane) * 4 + i : (f * 4 + i) * 32 + lane);
  }
  template <class T>
  static __device__ __forceinline__ void add(const BackwardArgs<T>& a, const Shape& n, int b,
                                             int h, int q0, int warp,
                                             const float (&dq)[Rows::kMT][Rows::kNT][4]) {
    float* base = tile(a, n, b, h, q0);
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int mt = 0; mt < Rows::kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < Rows::kNT; ++nt) {
        if constexpr (kVector) {
#if __CUDA_ARCH__ >= 900
          atomicAdd(reinterpret_cast<float4*>(base + offset(warp, mt, nt, 0, lane)),
                    make_float4(dq[mt][nt][0], dq[mt][nt][1], dq[mt][nt][2], dq[mt][nt][3]));
#endif
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) atomicAdd(base + offset(warp, mt, nt, i, lane), dq[mt][nt][i]);
        }
      }
  }
  // The fragments into a tile-sized fp32 buffer in shared memory, laid out as add() lays
  // them in global memory: the warp-specialised backward (backward_sm90_ws.cuh) adds the
  // whole tile to global memory with one bulk reduction.
  static __device__ __forceinline__ void to_shared(float* tile, int warp,
                                                   const float (&dq)[Rows::kMT][Rows::kNT][4]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int mt = 0; mt < Rows::kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < Rows::kNT; ++nt) {
        if constexpr (kVector) {
          *reinterpret_cast<float4*>(tile + offset(warp, mt, nt, 0, lane)) =
              make_float4(dq[mt][nt][0], dq[mt][nt][1], dq[mt][nt][2], dq[mt][nt][3]);
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) tile[offset(warp, mt, nt, i, lane)] = dq[mt][nt][i];
        }
      }
  }
  template <class T>
  static __device__ __forceinline__ void read(const BackwardArgs<T>& a, const Shape& n, int b,
                                              int h, int q0, int warp,
                                              float (&dq)[Rows::kMT][Rows::kNT][4]) {
    const float* base = tile(a, n, b, h, q0);
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int mt = 0; mt < Rows::kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < Rows::kNT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) dq[mt][nt][i] = base[offset(warp, mt, nt, i, lane)];
  }
};

// dQ = scale * the fragment-ordered buffer, in T: one CTA per (Q tile, batch * head),
// its warps laid out like the backward kernel's dQ warps.
template <class T, class Rows, int BM, int D, int W>
__global__ void __launch_bounds__(32 * W)
dq_convert_kernel(const BackwardArgs<T> a) {
  const int b = blockIdx.y / a.shape.heads, h = blockIdx.y % a.shape.heads;
  const Shape n = a.shape.for_sequence(b);
  const int q0 = blockIdx.x * BM, warp = threadIdx.x >> 5;
  if (q0 >= n.q_len) return;  // varlen: past a shorter sequence's rows
  float dq[Rows::kMT][Rows::kNT][4];
  DqFragments<Rows, BM, D>::read(a, n, b, h, q0, warp, dq);
  if (a.dq_f32.data) {  // unrounded (args.cuh)
    store_accumulator(a.dq_f32.from_row(n.q_start), b, h, q0, Rows::row0(warp), Rows::col0(warp),
                      n.q_len, dq, n.scale);
    return;
  }
  store_accumulator(a.dq.from_row(n.q_start), b, h, q0, Rows::row0(warp), Rows::col0(warp),
                    n.q_len, dq, n.scale);
}

// A Q tile's operands, laid out as Layout (schedule.cuh) says: Q, dO, and its rows' lse and
// delta, which land with them (read from global memory after the GEMMs, their latency sat
// on every tile's path).
template <class Layout, int BM, int D, int Dv, int Threads, class T>
__device__ __forceinline__ void load_query_tile(const BackwardArgs<T>& a, const Shape& n,
                                                const Strided4<const T>& q_in,
                                                const Strided4<const T>& do_in, int b, int h,
                                                int q0, T* sQ, T* sdO, float* sLse, float* sDelta) {
  Layout::template load<BM, D, Threads>(sQ, q_in.at(b, h, q0), a.q.row, n.q_len - q0, a.q.data);
  Layout::template load<BM, Dv, Threads>(sdO, do_in.at(b, h, q0), a.dout.row, n.q_len - q0,
                                         a.dout.data);
  const int64_t rows = n.row(b, h, q0);
  load_rows_f32<BM, Threads>(sLse, a.lse + rows, n.q_len - q0, a.lse);
  load_rows_f32<BM, Threads>(sDelta, a.delta + rows, n.q_len - q0, a.delta);
}

// A backward CTA's place: KV tile blockIdx.x of (batch, KV head) blockIdx.y, its
// sequence's shape, and Q and dO from the sequence's first row.
template <class T>
struct BackwardCta {
  int n_block, b, hk;
  Shape n;
  int group, k0;
  Strided4<const T> q, dout;

  __device__ __forceinline__ BackwardCta(const BackwardArgs<T>& a, int block_n)
      : n_block(blockIdx.x),
        b(blockIdx.y / a.shape.kv_heads),
        hk(blockIdx.y % a.shape.kv_heads),
        n(a.shape.for_sequence(b)),
        group(n.heads / n.kv_heads),
        k0(n_block * block_n),
        q(a.q.from_row(n.q_start)),
        dout(a.dout.from_row(n.q_start)) {}
  // varlen: a CTA past a shorter sequence's keys has nothing to do
  __device__ __forceinline__ bool past_keys() const { return k0 >= n.kv_len; }
};

// The walk of a backward CTA over the Q tiles of KV tile n_block: its rows are the GQA
// group's query heads; each row's candidates are all Q tiles, or this KV tile's
// block-sparse list for that head, minus those the mask skips.
template <class V, int BM, int BN, class T>
__device__ __forceinline__ auto key_tile_walk(const BackwardArgs<T>& a, const typename V::Params& p,
                                              const Shape& n, int b, int hk, int n_block) {
  const int group = n.heads / n.kv_heads, q_tiles = (n.q_len + BM - 1) / BM;
  const int k0 = n_block * BN, q_len = n.q_len, kv_len = n.kv_len;
  return tile_walk(
      [&a, &p, b, hk, group, n_block, q_tiles, k0, q_len, kv_len](int r) {
        // cut to the queries the mask's comparisons leave
        return cut_to_queries<V>(tile_row<V>(a.sparse.by_kv, b, hk * group + r, n_block, q_tiles),
                                 p, b, hk * group + r, k0, BN, BM, q_len, kv_len);
      },
      [&a, &p, b, hk, group, k0, q_len, kv_len](int r, int entry) {
        return classify_entry<V, BM, BN>(p, a.sparse, b, hk * group + r,
                                         TileRow::tile_of(entry) * BM, k0, q_len, kv_len, entry);
      },
      group,
      [&p, b, hk, group, k0, q_len, kv_len](int r, int tile, int tiles) {  // Q tiles here
        return span_skipped<V>(p, b, hk * group + r, tile * BM, tiles * BM, k0, BN, q_len,
                               kv_len);
      });
}

// A KV tile's dK (times the softmax scale) and dV from a warp's accumulator blocks (first
// elements at (rk, ck) and (rv, cv) of the tile), rows past the sequence dropped; in
// fp32, unrounded, for a caller that sums several calls' (args.cuh).
template <class T, int MK, int NK, int MV, int NV>
__device__ __forceinline__ void store_key_gradients(const BackwardArgs<T>& a, const Shape& n, int b,
                                                    int hk, int k0, int rk, int ck,
                                                    const float (&dk)[MK][NK][4], int rv, int cv,
                                                    const float (&dv)[MV][NV][4]) {
  if (a.dk_f32.data) {
    store_accumulator(a.dk_f32.from_row(n.kv_start), b, hk, k0, rk, ck, n.kv_len, dk, n.scale);
    store_accumulator(a.dv_f32.from_row(n.kv_start), b, hk, k0, rv, cv, n.kv_len, dv, 1.0f);
    return;
  }
  store_accumulator(a.dk.from_row(n.kv_start), b, hk, k0, rk, ck, n.kv_len, dk, n.scale);
  store_accumulator(a.dv.from_row(n.kv_start), b, hk, k0, rv, cv, n.kv_len, dv, 1.0f);
}

// kDq = false (deterministic mode): dQ is left to dq_kernel below. kDropout: the spec
// has dropout and the call's p > 0. kParamGrads: the call wants gradients of the
// score's float tables (V::Grads::any()); without them the kernel carries none of that
// code (its branches and atomics cost ALiBi's backward 30 % more instructions).
template <class V, class T, int D, int Dv, int BM, int BN, int W, int Stages, bool kDq,
          bool kDropout, bool kParamGrads>
__global__ void __launch_bounds__(32 * W, 1)
backward_kernel(const BackwardArgs<T> a, const typename V::Params p, const typename V::Grads g) {
  using Tiles = BackwardTiles<D, Dv, BM, BN, W, Stages>;
  using SS = typename Tiles::Scores;
  using KK = typename Tiles::KeysK;
  using KV = typename Tiles::KeysV;
  using RR = typename Tiles::Rows;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + Tiles::kK;
  T* sQ = sV + Tiles::kV;              // [Stages][BM][D + pad]
  T* sdO = sQ + Stages * Tiles::kQ;    // [Stages][BM][Dv + pad]
  T* sP = sdO + Stages * Tiles::kDO;   // [BM][BN + pad]
  T* sdS = sP + Tiles::kP;             // [BM][BN + pad]
  float* sLse = reinterpret_cast<float*>(sdS + Tiles::kP);  // [Stages][BM]
  float* sDelta = sLse + Stages * BM;                       // [Stages][BM]

  const BackwardCta<T> cta(a, BN);
  if (cta.past_keys()) return;
  const Shape& n = cta.n;
  const int b = cta.b, hk = cta.hk, group = cta.group, k0 = cta.k0;
  const int warp = threadIdx.x >> 5;
  auto walk = key_tile_walk<V, BM, BN>(a, p, n, b, hk, cta.n_block);
  auto load_q_do = [&](int h, int q0, int stage) {
    load_query_tile<PaddedRows, BM, D, Dv, Tiles::kThreads>(
        a, n, cta.q, cta.dout, b, h, q0, sQ + stage * Tiles::kQ, sdO + stage * Tiles::kDO,
        sLse + stage * BM, sDelta + stage * BM);
  };

  load_tile<BN, D, Tiles::kThreads>(sK, a.k.at(b, hk, n.kv_start + k0), a.k.row, n.kv_len - k0,
                                    a.k.data);
  load_tile<BN, Dv, Tiles::kThreads>(sV, a.v.at(b, hk, n.kv_start + k0), a.v.row, n.kv_len - k0,
                                     a.v.data);
  if (!walk.done()) load_q_do(hk * group + walk.r, TileRow::tile_of(walk.entry) * BM, 0);
  cp_async_commit();

  float dk[KK::kMT][KK::kNT][4], dv[KV::kMT][KV::kNT][4];
  zero(dk);
  zero(dv);
  typename GradSumsOf<V>::type sums{};
  const int lane = threadIdx.x & 31;
  for (int stage = 0; !walk.done();) {
    const int h = hk * group + walk.r, q0 = TileRow::tile_of(walk.entry) * BM;
    const TileMask tile = walk.mask;
    cp_async_wait<0>();
    __syncthreads();
    walk.advance();
    const int h_next = hk * group + walk.r, q0_next = TileRow::tile_of(walk.entry) * BM;
    if (Stages == 2 && !walk.done()) load_q_do(h_next, q0_next, stage ^ 1);
    cp_async_commit();
    const T* q_tile = sQ + stage * Tiles::kQ;
    const T* do_tile = sdO + stage * Tiles::kDO;

    // 1. S and dP for this warp's rows x keys
    float s[SS::kMT][SS::kNT][4], dp[SS::kMT][SS::kNT][4];
    zero(s);
    zero(dp);
    const int sr = SS::row0(warp), sc = SS::col0(warp);
    warp_gemm<SS::kMT, SS::kNT, D, false, false>(s, q_tile, Tiles::kLdQK, sr, sK, Tiles::kLdQK, sc);
    warp_gemm<SS::kMT, SS::kNT, Dv, false, false>(dp, do_tile, Tiles::kLdV, sr, sV, Tiles::kLdV, sc);

    // 2. P and dS, element by element; to shared memory as T pairs
    const float* lse_tile = sLse + stage * BM;
    const float* delta_tile = sDelta + stage * BM;
    auto p_and_ds = [&](auto partial) {
      constexpr bool kPartial = decltype(partial)::value;
      const FragmentMask<V, SS::kMT, SS::kNT> mask(p, b, h, q0 + sr + (lane >> 2),
                                                   k0 + sc + 2 * (lane & 3), n.q_len, n.kv_len);
#pragma unroll
      for (int mt = 0; mt < SS::kMT; ++mt) {
        const int r = sr + 16 * mt + (lane >> 2);  // this thread's rows: r and r + 8
        float lse2[2], delta[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          lse2[half] = row_lse2(lse_tile[r + 8 * half], q0 + r + 8 * half < n.q_len);
          delta[half] = delta_tile[r + 8 * half];
        }
#pragma unroll
        for (int nt = 0; nt < SS::kNT; ++nt) {
          const int c = sc + 8 * nt + 2 * (lane & 3);
          bool block = true;
          if constexpr (kPartial)
            block = fragment_block_visible<V>(tile, a.sparse, h, q0 + r, k0 + c, n.q_len,
                                              n.kv_len);
          float keep[4] = {1.0f, 1.0f, 1.0f, 1.0f};
          if constexpr (kDropout)
            dropout_factors(a.dropout, b * n.heads + h, q0 + r, k0 + c, keep);
          float pv[4], dsv[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {  // rows r, r, r + 8, r + 8; columns c, c + 1, c, c + 1
            const int half = i >> 1;
            const int q = q0 + r + 8 * half, kv_idx = k0 + c + (i & 1);
            const bool visible =
                !kPartial || mask.visible(p, block, b, h, mt, nt, i, q, kv_idx, n.q_len, n.kv_len);
            score_gradient<V, kPartial, kParamGrads>(p, g, sums, n, visible, lse2[half], delta[half], b, h, q,
                                              kv_idx, s[mt][nt][i], dp[mt][nt][i], keep[i], pv[i],
                                              dsv[i]);
          }
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int at = (r + 8 * half) * Tiles::kLdP + c;
            *reinterpret_cast<uint32_t*>(sP + at) = pack2<T>(pv[2 * half], pv[2 * half + 1]);
            *reinterpret_cast<uint32_t*>(sdS + at) = pack2<T>(dsv[2 * half], dsv[2 * half + 1]);
          }
        }
      }
    };
    if (tile.partial()) {
      p_and_ds(std::true_type{});
    } else {
      p_and_ds(std::false_type{});
    }
    if constexpr (kParamGrads && V::kHasParamGrads) {  // at each change of head (uniform)
      if (walk.done() || h_next != h) V::flush_param_grads(p, g, sums, b, h, n.q_len, n.kv_len);
    }
    __syncthreads();

    // 3. dV += P^T dO, dK += dS^T Q
    warp_gemm<KV::kMT, KV::kNT, BM, true, true>(dv, sP, Tiles::kLdP, KV::row0(warp), do_tile,
                                                 Tiles::kLdV, KV::col0(warp));
    warp_gemm<KK::kMT, KK::kNT, BM, true, true>(dk, sdS, Tiles::kLdP, KK::row0(warp), q_tile,
                                                 Tiles::kLdQK, KK::col0(warp));

    // 4. dQ += dS K (unscaled; the host multiplies by the softmax scale)
    if constexpr (kDq) {
      float dq[RR::kMT][RR::kNT][4];
      zero(dq);
      const int rr = RR::row0(warp), rc = RR::col0(warp);
      warp_gemm<RR::kMT, RR::kNT, BN, false, true>(dq, sdS, Tiles::kLdP, rr, sK, Tiles::kLdQK, rc);
      DqFragments<RR, BM, D>::add(a, n, b, h, q0, warp, dq);
    }
    __syncthreads();  // P, dS and this Q/dO stage are free again
    if (Stages == 1 && !walk.done()) load_q_do(h_next, q0_next, 0);
    cp_async_commit();
    if (Stages == 2) stage ^= 1;
  }

  store_key_gradients(a, n, b, hk, k0, KK::row0(warp), KK::col0(warp), dk, KV::row0(warp),
                      KV::col0(warp), dv);
}

// Deterministic dQ: one CTA per (BM query rows, batch * head), shaped like the
// forward pass: it walks the tile lists of the forward's ListRows-row tiles (the same, or
// half of three consumers' 192 rows: plan/tiles.py dq_block_m), whose classes hold for
// any rows inside them. It walks the KV tiles in order, recomputing S and dP, and keeps dQ in
// registers, so every sum runs in one fixed order and no atomics touch dQ: bit-identical
// run to run, at the price of recomputing S and dP (two more GEMMs per tile).
template <int D, int Dv, int BM, int BN, int W>
struct DqTiles {
  static constexpr int kThreads = 32 * W;
  static constexpr int kLdQK = D + kSmemPad, kLdV = Dv + kSmemPad;
  static constexpr int kQ = BM * kLdQK, kDO = BM * kLdV, kK = BN * kLdQK, kV = BN * kLdV;
  // K/V double-buffered where two stages fit beside Q and dO (2-byte elements); at d = 256
  // on the warp-specialised forward's 64-key tiles they would take 264 KiB, so one stage
  static constexpr int kStages = (kQ + kDO + 2 * (kK + kV)) * 2 <= 227 * 1024 ? 2 : 1;
  template <class T>
  static constexpr int smem_bytes() { return (kQ + kDO + kStages * (kK + kV)) * int(sizeof(T)); }
  static_assert(BM == 16 * W, "each warp owns 16 query rows");
};

// The deterministic dQ CTA's row of K/V tiles: the forward's list row, or every tile cut
// to the keys the mask's comparisons leave its BM query rows (trim_row)
template <class V, int BM, int BN, class T>
__device__ __forceinline__ TileRow dq_tiles(const BackwardArgs<T>& a, const typename V::Params& p,
                                            const Shape& n, int b, int h, int list_row, int q0) {
  return cut_to_keys<V>(tile_row<V>(a.sparse.by_q, b, h, list_row, (n.kv_len + BN - 1) / BN), p,
                        b, h, q0, BM, BN, n.q_len, n.kv_len);
}

template <class V, class T, int D, int Dv, int BM, int BN, int W, int ListRows, bool kDropout>
__global__ void __launch_bounds__(32 * W, 1)
dq_kernel(const BackwardArgs<T> a, const typename V::Params p) {
  using Tiles = DqTiles<D, Dv, BM, BN, W>;
  static_assert(ListRows % BM == 0, "a CTA's rows lie inside one of the forward's tiles");
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sdO = sQ + Tiles::kQ;
  T* sK = sdO + Tiles::kDO;                // [kStages][BN][D + pad]
  T* sV = sK + Tiles::kStages * Tiles::kK;  // [kStages][BN][Dv + pad]

  const int m_block = gridDim.x - 1 - blockIdx.x;
  const int b = blockIdx.y / a.shape.heads, h = blockIdx.y % a.shape.heads;
  const Shape n = a.shape.for_sequence(b);
  const int hk = h / (n.heads / n.kv_heads);
  const int q0 = m_block * BM;
  if (q0 >= n.q_len) return;  // varlen: past a shorter sequence's rows
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const KvStream<V, T, D, Dv, BM, BN, Tiles::kThreads> kv{
      sK, sV, p, n, a.sparse, a.k.from_row(n.kv_start), a.v.from_row(n.kv_start), b, h, hk, q0,
      dq_tiles<V, BM, BN>(a, p, n, b, h, q0 / ListRows, q0)};
  load_tile<BM, D, Tiles::kThreads>(sQ, a.q.at(b, h, n.q_start + q0), a.q.row, n.q_len - q0,
                                    a.q.data);
  load_tile<BM, Dv, Tiles::kThreads>(sdO, a.dout.at(b, h, n.q_start + q0), a.dout.row,
                                     n.q_len - q0, a.dout.data);

  // this thread's two rows
  const int row0 = q0 + 16 * warp;
  float lse2[2], delta[2];
  const int64_t head = n.row(b, h, 0);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int q = row0 + (lane >> 2) + 8 * r, q_safe = min(q, n.q_len - 1);
    lse2[r] = row_lse2(a.lse[head + q_safe], q < n.q_len);
    delta[r] = a.delta[head + q_safe];
  }
  const typename V::Grads no_grads{};
  typename GradSumsOf<V>::type no_sums{};
  float dq[1][D / 8][4];
  zero(dq);
  // A tile of more than 128 keys (the warp-specialised forward's 160 at d = 128) in two
  // passes: its S and dP would take 2 x 80 registers beside dQ's 64 (ptxas spilled 36 bytes)
  constexpr int kKeys = BN > 128 ? BN / 2 : BN;
  static_assert(BN % kKeys == 0 && kKeys % 16 == 0, "a pass covers whole k16 steps");
  kv.template for_each<Tiles::kStages>([&](int tile_k0, TileMask tile, const T* sK_tile,
                                            const T* sV_tile) {
#pragma unroll 1
    for (int pass = 0; pass < BN / kKeys; ++pass) {
      const int k0 = tile_k0 + pass * kKeys;
      const T* sK_keys = sK_tile + pass * kKeys * Tiles::kLdQK;
      const T* sV_keys = sV_tile + pass * kKeys * Tiles::kLdV;
      float s[1][kKeys / 8][4], dp[1][kKeys / 8][4];
      zero(s);
      zero(dp);
      warp_gemm<1, kKeys / 8, D, false, false>(s, sQ, Tiles::kLdQK, 16 * warp, sK_keys, Tiles::kLdQK, 0);
      warp_gemm<1, kKeys / 8, Dv, false, false>(dp, sdO, Tiles::kLdV, 16 * warp, sV_keys, Tiles::kLdV, 0);
      auto ds_of = [&](auto partial) {
        constexpr bool kPartial = decltype(partial)::value;
        const FragmentMask<V, 1, kKeys / 8> mask(p, b, h, row0 + (lane >> 2), k0 + 2 * (lane & 3),
                                                 n.q_len, n.kv_len);
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; ++nt) {
          const int c = k0 + 8 * nt + 2 * (lane & 3);
          bool block = true;
          if constexpr (kPartial)
            block = fragment_block_visible<V>(tile, a.sparse, h, row0 + (lane >> 2), c, n.q_len,
                                              n.kv_len);
          float keep[4] = {1.0f, 1.0f, 1.0f, 1.0f};
          if constexpr (kDropout) dropout_factors(a.dropout, blockIdx.y, row0 + (lane >> 2), c, keep);
#pragma unroll
          for (int i = 0; i < 4; ++i) {  // compile-time indices keep everything in registers
            const int r = i >> 1;
            const int q = row0 + (lane >> 2) + 8 * r, kv_idx = c + (i & 1);
            float prob;
            const bool visible =
                !kPartial || mask.visible(p, block, b, h, 0, nt, i, q, kv_idx, n.q_len, n.kv_len);
            score_gradient<V, kPartial, false>(p, no_grads, no_sums, n, visible, lse2[r], delta[r], b, h, q,
                                               kv_idx, s[0][nt][i], dp[0][nt][i], keep[i], prob,
                                               s[0][nt][i]);
          }
        }
      };
      if (tile.partial()) {
        ds_of(std::true_type{});
      } else {
        ds_of(std::false_type{});
      }
      uint32_t ds[1][kKeys / 16][4];
      accumulator_to_a<T>(ds[0], s[0]);
      warp_gemm_rA<1, kKeys / 16, D / 8, true>(dq, ds, sK_keys, Tiles::kLdQK, 0);
    }
  });
  if (a.dq_f32.data) {  // unrounded (args.cuh)
    store_accumulator(a.dq_f32.from_row(n.q_start), b, h, q0, 16 * warp, 0, n.q_len, dq, n.scale);
    return;
  }
  store_accumulator(a.dq.from_row(n.q_start), b, h, q0, 16 * warp, 0, n.q_len, dq, n.scale);
}

}  // namespace fg
