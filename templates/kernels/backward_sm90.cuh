// The backward pass on Hopper (sm_90a): backward.cuh's algorithm (FlashAttention-2, by
// recomputation; one CTA per BN keys) with its five GEMMs on warpgroup MMA (wgmma.cuh).
//
// The CTA has BN / 64 warpgroups; each owns 64 of the keys and holds their dK and dV
// accumulators for the whole walk. Per Q tile of BM = 64 query rows:
//   1. S^T = K Q^T and dP^T = V dO^T, both operands in shared memory (two wgmma chains
//      in flight together). The scores come out transposed, keys x query rows, because
//      the next two GEMMs contract over the query rows: P^T and dS^T in registers are
//      then already their A operands, and never go through shared memory.
//   2. P = exp2(score(S) - lse) and dS, element by element: backward.cuh's
//      score_gradient on the transposed fragments (lse and delta are per column here).
//   3. dV += P^T dO and dK += dS^T Q: A from registers, B MN-major (Q and dO as they lie).
//   4. dS^T to shared memory, then dQ = dS K, both operands MN-major: each warpgroup
//      makes D / (BN / 64) of dQ's columns, added to the fp32 buffer with atomics
//      (backward.cuh DqFragments; the deterministic mode leaves dQ to dq_kernel).
// Loads go into 128-byte-swizzled tiles, the next Q/dO tile landing while this one
// computes, as in the mma.sync backward. A padded batch's Q and dO tiles are loaded by
// TMA (tma.cuh), one thread issuing a box per 64 columns onto the stage's mbarrier, so
// that the CTA's threads stop spending issue slots on 16-byte copies and their address
// math (the forward's producer gained 20 % from the same change, PERF.md); a packed
// batch, and Q / dO that TMA cannot address, load with cp.async from every thread. K, V
// (once per CTA) and the per-row lse and delta (4-byte rows) stay cp.async. Not yet: warp
// specialisation, and overlapping one tile's elementwise step with another's GEMMs.
#pragma once
#include "backward.cuh"
#include "pipeline.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace fg {

// This thread's fragments of a transposed tile (A fragments of the warp's 16 keys from
// warp_key0 by COLS query rows from col_offset: P^T or dS^T) into the swizzled keys x
// query rows tile at tile, made visible to the async proxy for the wgmmas that read it
// after the caller's barrier. frag[kt] holds keys key0 and key0 + 8 at query rows
// col_offset + 16 kt + col0 (+1) and + 8 (+1).
template <class Tile, int COLS>
__device__ __forceinline__ void store_transposed_fragments(unsigned char* tile,
                                                           const uint32_t (&frag)[COLS / 16][4],
                                                           int warp_key0, int col_offset) {
  const int lane = threadIdx.x & 31;
  const int key0 = warp_key0 + (lane >> 2), col0 = col_offset + 2 * (lane & 3);
#pragma unroll
  for (int kt = 0; kt < COLS / 16; ++kt)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = key0 + 8 * (j & 1), c = 16 * kt + 8 * (j >> 1) + col0;
      *reinterpret_cast<uint32_t*>(tile + Tile::chunk_offset(r, c & ~7) + (c & 7) * 2) = frag[kt][j];
    }
  fence_proxy_async();
}

template <int D, int Dv, int BM, int BN>
struct BackwardTilesSm90 {
  static constexpr int kBM = BM, kBN = BN, kD = D, kDv = Dv;
  static constexpr int kWarpgroups = BN / 64;
  static constexpr int kThreads = 128 * kWarpgroups;
  static constexpr int kWarps = 4 * kWarpgroups;
  using K = SwizzledTile<BN, D>;
  using V = SwizzledTile<BN, Dv>;
  using Q = SwizzledTile<BM, D>;
  using DO = SwizzledTile<BM, Dv>;
  using DS = SwizzledTile<BN, BM>;  // dS^T: keys x query rows
  static constexpr int kDqCols = D / kWarpgroups;  // dQ's columns per warpgroup
  // K, V, two Q/dO stages, dS^T, then each stage's lse and delta (fp32) and its TMA
  // mbarrier; +1024 to align the start on a swizzle pattern
  static constexpr int kStatsOffset = K::kBytes + V::kBytes + 2 * (Q::kBytes + DO::kBytes) + DS::kBytes;
  static constexpr int kBarrierOffset = kStatsOffset + 2 * 2 * BM * int(sizeof(float));
  static constexpr int kSmemBytes = kBarrierOffset + 2 * 8 + 1024;
  // Host: the tensor maps of a padded batch's Q and dO in boxes of BM rows (tma.cuh);
  // inactive (the kernel loads with cp.async) for a packed batch or where TMA refuses
  template <class T>
  static QueryTensorMaps encode_maps(const BackwardArgs<T>& a) {
    QueryTensorMaps maps{};
    const Shape& n = a.shape;
    maps.active = !n.varlen() &&
                  encode_tensor_map(&maps.q, a.q, n.batch, n.heads, n.q_len, D, BM) &&
                  encode_tensor_map(&maps.dout, a.dout, n.batch, n.heads, n.q_len, Dv, BM);
    return maps;
  }
  template <class T>
  static constexpr int smem_bytes() { return kSmemBytes; }
  // dQ's warps for DqFragments and dq_convert_kernel: warp w holds rows 16 (w % 4) ..
  // + 15 and columns (w / 4) kDqCols .. + kDqCols - 1 of the BM x D tile
  struct Rows {
    static constexpr int kMT = 1, kNT = kDqCols / 8;
    static __device__ __forceinline__ int row0(int warp) { return 16 * (warp % 4); }
    static __device__ __forceinline__ int col0(int warp) { return (warp / 4) * kDqCols; }
  };
  // This thread's dS^T fragments into the dS^T tile at sdS (store_transposed_fragments)
  static __device__ __forceinline__ void store_ds_transposed(unsigned char* sdS,
                                                             const uint32_t (&dst)[BM / 16][4],
                                                             int warp_key0) {
    store_transposed_fragments<DS, BM>(sdS, dst, warp_key0, 0);
  }
  static_assert(BM == 64, "every warpgroup makes all BM rows of dQ: wgmma's M is 64");
  static_assert(BN == 64 || BN == 128, "one or two warpgroups of 64 keys");
  static_assert(D % 64 == 0 && Dv % 64 == 0 && Dv <= 128 && D <= 128,
                "whole 128-byte rows; dK and dV of 64 keys in registers");
  static_assert(kDqCols % 32 == 0, "dQ's wgmma is n32 or wider");
  static_assert(Q::kBytes + DO::kBytes < (1 << 20), "an mbarrier's transaction count");
};

// A warpgroup's 64 keys (key block `block` of the CTA's BN) as its wgmmas address them,
// and steps 1 and 3 of a Q tile on them (both kernels: backward_sm90_ws.cuh too).
template <class Tiles, class T>
struct KeyBlockGemms {
  static constexpr int BM = Tiles::kBM, D = Tiles::kD, Dv = Tiles::kDv;
  uint32_t k_rows, v_rows;  // A of S^T and dP^T: rows 128 bytes apart in each block
  uint32_t k_cols;          // dQ's B: this block's columns of K, MN-major (a column offset
                            // inside a 128-byte row is an address offset: the swizzle acts
                            // on the address bits)
  __device__ __forceinline__ KeyBlockGemms(const T* sK, const T* sV, int block) {
    const int dq_col0 = block * Tiles::kDqCols;
    k_rows = smem_address(sK) + block * 64 * 128;
    v_rows = smem_address(sV) + block * 64 * 128;
    k_cols = smem_address(sK) + (dq_col0 >> 6) * Tiles::K::kBlockBytes +
             (dq_col0 & 63) * int(sizeof(T));
  }
  // 1. S^T = K Q^T and dP^T = V dO^T for these keys x the tile's query rows, waited for
  __device__ __forceinline__ void scores(float (&s)[BM / 8][4], float (&dp)[BM / 8][4],
                                         uint32_t q_tile, uint32_t do_tile) const {
    issue_gemm_ss<T, BM, D>(s, k_rows, Tiles::K::kBlockBytes, q_tile, Tiles::Q::kBlockBytes);
    issue_gemm_ss<T, BM, Dv>(dp, v_rows, Tiles::V::kBlockBytes, do_tile, Tiles::DO::kBlockBytes);
    wgmma_wait<0>();
    fence_operand(s);
    fence_operand(dp);
  }
  // 3. dV += P^T dO and dK += dS^T Q issued (two groups; the caller waits)
  __device__ __forceinline__ void key_gradients(float (&dv)[Dv / 8][4], float (&dk)[D / 8][4],
                                                const uint32_t (&pt)[BM / 16][4],
                                                const uint32_t (&dst)[BM / 16][4],
                                                uint32_t q_tile, uint32_t do_tile) const {
    issue_gemm_rs<T, Dv, BM>(dv, pt, do_tile, Tiles::DO::kBlockBytes);
    issue_gemm_rs<T, D, BM>(dk, dst, q_tile, Tiles::Q::kBlockBytes);
  }
  // 4. dQ's columns of this block from the whole dS^T (issued; the caller waits)
  __device__ __forceinline__ void dq(float (&c)[Tiles::kDqCols / 8][4], uint32_t ds_tile) const {
    issue_gemm_ss_mn_major<T, Tiles::kDqCols, Tiles::kBN>(c, ds_tile, k_cols, Tiles::K::kBlockBytes);
  }
};

// Step 2 of a Q tile, element by element on this thread's fragments of S^T and dP^T (the
// 16 keys from warp_key0, all BM query rows): P^T (times the dropout factor) into s and
// dS^T into dp, from the rows' lse and delta in shared memory. The tile's mask decides
// between the instance that tests each element and the one that tests none.
//
// kAffine: the score adds a bias affine in q_idx (variant.cuh kAffineBiasQ; ALiBi), and no
// parameter gradient is asked for. The bias is then taken once per key row of this thread
// and Q tile, at its first query column, and a column of offset c adds c * bias_q_step,
// a compile-time multiple, with -lse2 in the same FFMA: one FFMA per column pair and one
// FADD per element, where the per-element form spent an integer subtract, a conversion,
// a multiply and an add (the forward's version of this: forward.cuh add_affine_bias).
template <class V, int BM, bool kDropout, bool kParamGrads, class T>
__device__ __forceinline__ void transposed_gradients(
    const BackwardArgs<T>& a, const typename V::Params& p, const typename V::Grads& g,
    typename GradSumsOf<V>::type& sums, const Shape& n, const TileMask& tile, int b, int h, int q0,
    int k0, int warp_key0, const float* lse_tile, const float* delta_tile, float (&s)[BM / 8][4],
    float (&dp)[BM / 8][4]) {
  const int lane = threadIdx.x & 31;
  const int key0 = warp_key0 + (lane >> 2);  // this thread's keys: key0 and key0 + 8
  const int col0 = 2 * (lane & 3);           // and query columns: col0 (+1) + 8 nt
  constexpr bool kAffine = V::kAffineBiasQ && !kParamGrads;
  [[maybe_unused]] float key_bias2[2], q_step2[2];  // kAffine: per key row, in log2 units
  if constexpr (kAffine) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = q0 + col0, kv_idx = k0 + key0 + 8 * r;
      key_bias2[r] = V::bias(p, b, h, q, kv_idx, n.q_len, n.kv_len) * kLog2e;
      q_step2[r] = V::bias_q_step(p, b, h, q, kv_idx, n.q_len, n.kv_len) * kLog2e;
    }
  }
  auto p_and_ds = [&](auto partial) {
    constexpr bool kPartial = decltype(partial)::value;
    const TransposedFragmentMask<V, BM / 8> mask(p, b, h, k0 + key0, q0 + col0, n.q_len,
                                                 n.kv_len);
    [[maybe_unused]] float keep_pair[2][4];  // kDropout: the factors of fragments nt and nt + 1 (nt even)
#pragma unroll
    for (int nt = 0; nt < BM / 8; ++nt) {
      const int c = col0 + 8 * nt;  // this thread's query rows: c and c + 1
      const float2 lse = *reinterpret_cast<const float2*>(lse_tile + c);
      const float2 delta = *reinterpret_cast<const float2*>(delta_tile + c);
      const float lse2[2] = {row_lse2(lse.x, q0 + c < n.q_len), row_lse2(lse.y, q0 + c + 1 < n.q_len)};
      const float row_delta[2] = {delta.x, delta.y};
      bool block = true;
      if constexpr (kPartial)
        block = fragment_block_visible<V>(tile, a.sparse, h, q0 + c, k0 + key0, n.q_len, n.kv_len);
      float keep[4] = {1.0f, 1.0f, 1.0f, 1.0f};
      if constexpr (kDropout) {
        if (nt % 2 == 0)
          dropout_factors_transposed(a.dropout, b * n.heads + h, q0 + 8 * nt, k0 + warp_key0,
                                     keep_pair);
#pragma unroll
        for (int i = 0; i < 4; ++i) keep[i] = keep_pair[nt % 2][i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {  // keys key0, key0, key0 + 8, key0 + 8; rows c, c + 1, c, c + 1
        const int q = q0 + c + (i & 1), kv_idx = k0 + key0 + 8 * (i >> 1);
        const bool visible =
            !kPartial || mask.visible(p, block, b, h, nt, i, q, kv_idx, n.q_len, n.kv_len);
        if constexpr (kAffine) {
          // the column's term first: for a bias_q_step that reads no kv_idx (ALiBi's) it is
          // the same for both key rows, and computed once
          const float column2 = fmaf(float(8 * nt + (i & 1)), q_step2[i >> 1], -lse2[i & 1]);
          offset_score_gradient<kPartial>(n, visible, key_bias2[i >> 1] + column2,
                                          row_delta[i & 1], s[nt][i], dp[nt][i], keep[i],
                                          s[nt][i], dp[nt][i]);
        } else {
          score_gradient<V, kPartial, kParamGrads>(p, g, sums, n, visible, lse2[i & 1],
                                                   row_delta[i & 1], b, h, q, kv_idx, s[nt][i],
                                                   dp[nt][i], keep[i], s[nt][i], dp[nt][i]);
        }
      }
    }
  };
  if (tile.partial()) {
    p_and_ds(std::true_type{});
  } else {
    p_and_ds(std::false_type{});
  }
}

// Template arguments as backward_kernel's (backward.cuh), without W and Stages: the warps
// are BN / 16, and Q/dO always have two stages.
template <class V, class T, int D, int Dv, int BM, int BN, bool kDq, bool kDropout,
          bool kParamGrads>
__global__ void __launch_bounds__(BackwardTilesSm90<D, Dv, BM, BN>::kThreads, 1)
backward_kernel_sm90(const BackwardArgs<T> a, const typename V::Params p,
                     const typename V::Grads g, const __grid_constant__ QueryTensorMaps maps) {
  using Tiles = BackwardTilesSm90<D, Dv, BM, BN>;
  using Rows = typename Tiles::Rows;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_address(smem_raw) & 1023)) & 1023);
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = reinterpret_cast<T*>(smem + Tiles::K::kBytes);
  unsigned char* stages = smem + Tiles::K::kBytes + Tiles::V::kBytes;
  auto sQ = [&](int stage) { return reinterpret_cast<T*>(stages + stage * Tiles::Q::kBytes); };
  auto sdO = [&](int stage) {
    return reinterpret_cast<T*>(stages + 2 * Tiles::Q::kBytes + stage * Tiles::DO::kBytes);
  };
  unsigned char* sdS = stages + 2 * (Tiles::Q::kBytes + Tiles::DO::kBytes);
  float* sLse = reinterpret_cast<float*>(smem + Tiles::kStatsOffset);  // [2][BM]
  float* sDelta = sLse + 2 * BM;                                        // [2][BM]
  uint64_t* q_full = reinterpret_cast<uint64_t*>(smem + Tiles::kBarrierOffset);  // [2]

  const BackwardCta<T> cta(a, BN);
  if (cta.past_keys()) return;
  const Shape& n = cta.n;
  const int b = cta.b, hk = cta.hk, group = cta.group, k0 = cta.k0;
  const int warp = threadIdx.x >> 5, warpgroup = warp / 4;
  auto walk = key_tile_walk<V, BM, BN>(a, p, n, b, hk, cta.n_block);
  const bool tma = maps.active;  // uniform over the grid
  if (tma && threadIdx.x == 0) {
    mbarrier_init(&q_full[0], 1);  // the issuing thread's arrival, plus the boxes' bytes
    mbarrier_init(&q_full[1], 1);
    mbarrier_init_fence();
  }
  if (tma) __syncthreads();  // the barriers are initialised before anyone waits on them
  auto load_q_do = [&](int h, int q0, int stage) {
    if (tma) {
      if (threadIdx.x == 0) {
        mbarrier_arrive_expecting(&q_full[stage], Tiles::Q::kBytes + Tiles::DO::kBytes);
        tma_load_tile<BM, D>(sQ(stage), maps.q, q0, h, b, &q_full[stage]);
        tma_load_tile<BM, Dv>(sdO(stage), maps.dout, q0, h, b, &q_full[stage]);
      }
      const int64_t rows = n.row(b, h, q0);
      load_rows_f32<BM, Tiles::kThreads>(sLse + stage * BM, a.lse + rows, n.q_len - q0, a.lse);
      load_rows_f32<BM, Tiles::kThreads>(sDelta + stage * BM, a.delta + rows, n.q_len - q0,
                                         a.delta);
    } else {
      load_query_tile<SwizzledRows, BM, D, Dv, Tiles::kThreads>(
          a, n, cta.q, cta.dout, b, h, q0, sQ(stage), sdO(stage), sLse + stage * BM,
          sDelta + stage * BM);
    }
  };

  SwizzledRows::load<BN, D, Tiles::kThreads>(sK, a.k.at(b, hk, n.kv_start + k0), a.k.row,
                                             n.kv_len - k0, a.k.data);
  SwizzledRows::load<BN, Dv, Tiles::kThreads>(sV, a.v.at(b, hk, n.kv_start + k0), a.v.row,
                                              n.kv_len - k0, a.v.data);
  if (!walk.done()) load_q_do(hk * group + walk.r, TileRow::tile_of(walk.entry) * BM, 0);
  cp_async_commit();

  const KeyBlockGemms<Tiles, T> gemms(sK, sV, warpgroup);  // this warpgroup's 64 keys
  const int warp_key0 = 64 * warpgroup + 16 * (warp % 4);  // the warp's 16 keys in the tile

  float dk[1][D / 8][4], dv[1][Dv / 8][4];
  zero(dk);
  zero(dv);
  typename GradSumsOf<V>::type sums{};
  for (int stage = 0, tile_count = 0; !walk.done(); stage ^= 1, ++tile_count) {
    const int h = hk * group + walk.r, q0 = TileRow::tile_of(walk.entry) * BM;
    const TileMask tile = walk.mask;
    cp_async_wait<0>();
    // stage s is filled for the r-th time in phase r of its barrier: r = tile_count / 2
    if (tma) mbarrier_wait(&q_full[stage], (tile_count >> 1) & 1);
    fence_proxy_async();  // the cp.async writes, for the wgmmas that read them
    __syncthreads();      // this stage has landed; the last tile's dQ GEMMs are done with dS^T
    walk.advance();
    const int h_next = hk * group + walk.r, q0_next = TileRow::tile_of(walk.entry) * BM;
    if (!walk.done()) load_q_do(h_next, q0_next, stage ^ 1);
    cp_async_commit();
    const uint32_t q_tile = smem_address(sQ(stage)), do_tile = smem_address(sdO(stage));

    // 1. S^T and dP^T for this warpgroup's keys x the tile's query rows
    float s[1][BM / 8][4], dp[1][BM / 8][4];
    gemms.scores(s[0], dp[0], q_tile, do_tile);

    // 2. P^T (times the dropout factor) into s, dS^T into dp, element by element
    transposed_gradients<V, BM, kDropout, kParamGrads>(a, p, g, sums, n, tile, b, h, q0, k0,
                                                       warp_key0, sLse + stage * BM,
                                                       sDelta + stage * BM, s[0], dp[0]);
    if constexpr (kParamGrads && V::kHasParamGrads) {  // at each change of head (uniform)
      if (walk.done() || h_next != h) V::flush_param_grads(p, g, sums, b, h, n.q_len, n.kv_len);
    }
    uint32_t pt[BM / 16][4], dst[BM / 16][4];
    accumulator_to_a<T>(pt, s[0]);
    accumulator_to_a<T>(dst, dp[0]);

    // 3. dV += P^T dO, dK += dS^T Q, running while dS^T goes to shared memory
    gemms.key_gradients(dv[0], dk[0], pt, dst, q_tile, do_tile);

    // 4. dQ += dS K (unscaled; the host multiplies by the softmax scale)
    if constexpr (kDq) {
      Tiles::store_ds_transposed(sdS, dst, warp_key0);
      __syncthreads();  // every warpgroup's keys of dS^T are in
      float dq[1][Tiles::kDqCols / 8][4];
      gemms.dq(dq[0], smem_address(sdS));
      wgmma_wait<0>();
      fence_operand(dq[0]);
      DqFragments<Rows, BM, D>::add(a, n, b, h, q0, warp, dq);
    } else {
      wgmma_wait<0>();
    }
    fence_operand(dv[0]);
    fence_operand(dk[0]);
  }

  const int key_row = 64 * warpgroup + 16 * (warp % 4);
  store_key_gradients(a, n, b, hk, k0, key_row, 0, dk, key_row, 0, dv);
}

}  // namespace fg
