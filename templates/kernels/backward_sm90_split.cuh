// The warp-specialised backward at d = 256 (sm_90a): backward_sm90_ws.cuh's producer and
// five warpgroup-MMA GEMMs, with the head dim split between the two consumers.
//
// Why: the d <= 128 kernel gives each consumer 64 keys and keeps their dK and dV in its
// registers, 64 x (D + Dv) fp32 = 256 registers per thread at d = 256: impossible. Here
// the CTA owns 64 keys, and consumer c owns columns c D / 2 .. (c + 1) D / 2 - 1 of
// their dK, dV and of every tile's dQ (64 + 64 accumulator registers for dK and dV, 64
// for dQ). Per Q tile of 64 rows (FlashAttention-3 splits hdim 256 this way too):
//   1. S^T = K Q^T and dP^T = V dO^T for all 64 keys, but only the consumer's 32 query
//      rows 32 c .. 32 c + 31 (wgmma n32: the scores are split, not recomputed);
//   2. P^T and dS^T on them, element by element (backward_sm90.cuh transposed_gradients,
//      shifted to those rows);
//   3. both halves to shared memory (P^T and dS^T tiles, keys x query rows, double
//      buffered), then one named barrier: each consumer's next GEMMs contract over all
//      64 rows;
//   4. dQ[:, half] = dS K[:, half] (both MN-major), dV[:, half] += P^T dO[:, half] and
//      dK[:, half] += dS^T Q[:, half] (A from shared memory, K-major; B MN-major); dQ
//      goes to the fp32 accumulator by 16-byte atomics from the registers while dV and
//      dK run, and the stage is released when they have read Q and dO. (K, V, two Q/dO
//      stages and the P^T / dS^T buffers fill 224 KiB: the d <= 128 kernel's 64 KiB dQ
//      tile for the producer's bulk reduction does not fit beside them.)
// Only a padded batch whose tensors TMA can address runs this kernel (encode_maps); the
// host runs the mma.sync backward for the rest.
#pragma once
#include "backward_sm90_ws.cuh"

namespace fg {

template <int D, int Dv, int Stages>
struct BackwardTilesSm90Split {
  static constexpr int kBM = 64, kBN = 64, kD = D, kDv = Dv, kStages = Stages;
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kWarps = 4 * kConsumers;  // dQ's warps (dq_convert_kernel's CTA)
  static constexpr int kHalfD = D / 2, kHalfDv = Dv / 2;  // a consumer's columns
  static constexpr int kRows = kBM / kConsumers;           // and query rows of S^T and dP^T
  // as in the d <= 128 kernel (backward_sm90_ws.cuh): the producer's walk and its lse /
  // delta address math need 40; the consumers hold 128 accumulators, 64 more for dQ
  static constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;
  using K = SwizzledTile<kBN, D>;
  using V = SwizzledTile<kBN, Dv>;
  using Q = SwizzledTile<kBM, D>;
  using DO = SwizzledTile<kBM, Dv>;
  using PT = SwizzledTile<kBN, kBM>;  // P^T and dS^T: keys x query rows
  // K, V, the Q/dO stages, two buffers of P^T and dS^T, each stage's lse, delta and
  // StagedTile, then the mbarriers (WsBackwardSmem); +1024 to align the start
  static constexpr int kStageOffset = K::kBytes + V::kBytes;
  static constexpr int kPtOffset = kStageOffset + Stages * (Q::kBytes + DO::kBytes);
  static constexpr int kStatsOffset = kPtOffset + 2 * 2 * PT::kBytes;
  static constexpr int kInfoOffset = kStatsOffset + Stages * 2 * kBM * int(sizeof(float));
  static constexpr int kBarrierOffset = kInfoOffset + Stages * int(sizeof(StagedTile));
  static constexpr int kSmemBytes = kBarrierOffset + (2 * Stages + 1) * 8 + 1024;
  template <class T>
  static constexpr int smem_bytes() { return kSmemBytes; }
  template <class T>
  static bool encode_maps(BackwardTensorMaps& maps, const BackwardArgs<T>& a) {
    return encode_backward_maps<D, Dv>(maps, a, kBM, kBN);
  }
  // dQ's warps for DqFragments and dq_convert_kernel: warp w (of the consumers' 8) holds
  // rows 16 (w % 4) .. + 15 and its consumer's columns (w / 4) kHalfD .. + kHalfD - 1
  struct Rows {
    static constexpr int kMT = 1, kNT = kHalfD / 8;
    static __device__ __forceinline__ int row0(int warp) { return 16 * (warp % 4); }
    static __device__ __forceinline__ int col0(int warp) { return (warp / 4) * kHalfD; }
  };
  // a P^T / dS^T buffer's two tiles
  __device__ __forceinline__ static uint32_t pt_offset(int buffer) {
    return kPtOffset + buffer * 2 * PT::kBytes;
  }
  __device__ __forceinline__ static uint32_t ds_offset(int buffer) {
    return pt_offset(buffer) + PT::kBytes;
  }
  static_assert(D % 128 == 0 && Dv % 128 == 0, "each consumer's half is whole 64-column blocks");
  static_assert(kHalfD <= 128 && kHalfDv <= 128,
                "a consumer's dK, dV (and dQ) halves of 64 keys in registers");
  static_assert(Stages >= 2, "a stage fills while the consumers read the other");
  static_assert(kSmemBytes <= 227 * 1024, "the CTA's shared memory");
  static_assert(Q::kBytes + DO::kBytes < (1 << 20) && K::kBytes + V::kBytes < (1 << 20),
                "an mbarrier's transaction count");
  static_assert(kProducerRegisters * 128 + kConsumerRegisters * 128 * kConsumers <=
                    (65536 / kThreads) / 8 * 8 * kThreads,
                "the reallocated registers fit the CTA's pool");
};

// The consumers' named barrier: both halves of P^T and dS^T are in shared memory.
constexpr int kHalvesBarrier = 1;

// Template arguments as backward_kernel_sm90_ws's, without BM and BN (64 x 64 tiles).
template <class V, class T, int D, int Dv, int Stages, bool kDq, bool kDropout, bool kParamGrads>
__global__ void __launch_bounds__(BackwardTilesSm90Split<D, Dv, Stages>::kThreads, 1)
backward_kernel_sm90_split(const BackwardArgs<T> a, const typename V::Params p,
                           const typename V::Grads g,
                           const __grid_constant__ BackwardTensorMaps maps) {
  using Tiles = BackwardTilesSm90Split<D, Dv, Stages>;
  constexpr int BM = Tiles::kBM, BN = Tiles::kBN, kRows = Tiles::kRows;
  constexpr int kHalfD = Tiles::kHalfD, kHalfDv = Tiles::kHalfDv;
  using Dq = DqFragments<typename Tiles::Rows, BM, D>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WsBackwardSmem<Tiles, T> sm(smem_raw);

  const BackwardCta<T> cta(a, BN);
  if (cta.past_keys()) return;  // (a padded batch's grid has no such CTA)
  const Shape& n = cta.n;
  const int b = cta.b, hk = cta.hk, k0 = cta.k0;
  if (threadIdx.x == 0) sm.init_barriers(Tiles::kConsumers);
  __syncthreads();  // the barriers are initialised; the CTA never meets again
  const int warpgroup = threadIdx.x / 128, warp = threadIdx.x >> 5;

  if (warpgroup == 0) {
    release_registers<Tiles::kProducerRegisters>();
    if (warp == 0) load_query_tiles<V>(a, p, cta, maps, sm);
    return;
  }

  set_registers<Tiles::kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int cwarp = warp - 4;                // among the consumers' 8 warps: Dq's warp index
  const int warp_key0 = 16 * (cwarp % 4);   // the warp's 16 keys (both consumers: all 64)
  const int row0 = kRows * consumer;        // this consumer's query rows of S^T and dP^T
  const uint32_t k_rows = smem_address(sm.sK), v_rows = smem_address(sm.sV);
  // this consumer's columns of K (dQ's B), Q (dK's B) and dO (dV's B): whole 64-column
  // blocks, so an address offset
  const int d_block = consumer * (kHalfD / 64), dv_block = consumer * (kHalfDv / 64);
  const uint32_t k_cols = k_rows + d_block * Tiles::K::kBlockBytes;

  float dk[1][kHalfD / 8][4], dv[1][kHalfDv / 8][4];
  zero(dk);
  zero(dv);
  typename GradSumsOf<V>::type sums{};
  mbarrier_wait(sm.kv_full, 0);
  for (int i = 0;; ++i) {  // i: Q tiles so far
    const int stage = i % Stages;
    const StagedTile tile = sm.wait_for_tile(i);
    if (tile.h < 0) break;
    const int h = tile.h, q0 = tile.q0;
    const uint32_t q_tile = smem_address(sm.q(stage)), do_tile = smem_address(sm.dout(stage));

    // 1. S^T and dP^T: all 64 keys x this consumer's 32 query rows (rows 128 bytes apart
    // in each block, 32 of them a whole number of swizzle patterns)
    float s[kRows / 8][4], dp[kRows / 8][4];
    issue_gemm_ss<T, kRows, D>(s, k_rows, Tiles::K::kBlockBytes, q_tile + row0 * 128,
                               Tiles::Q::kBlockBytes);
    issue_gemm_ss<T, kRows, Dv>(dp, v_rows, Tiles::V::kBlockBytes, do_tile + row0 * 128,
                                Tiles::DO::kBlockBytes);
    wgmma_wait<0>();
    fence_operand(s);
    fence_operand(dp);

    // 2. P^T into s, dS^T into dp, on these rows
    transposed_gradients<V, kRows, kDropout, kParamGrads>(
        a, p, g, sums, n, tile.mask, b, h, q0 + row0, k0, warp_key0,
        sm.sLse + stage * BM + row0, sm.sDelta + stage * BM + row0, s, dp);
    if constexpr (kParamGrads && V::kHasParamGrads) {  // at each change of head (uniform)
      if (tile.last_of_head) V::flush_param_grads(p, g, sums, b, h, n.q_len, n.kv_len);
    }
    uint32_t pt[kRows / 16][4], dst[kRows / 16][4];
    accumulator_to_a<T>(pt, s);
    accumulator_to_a<T>(dst, dp);

    // 3. both consumers' halves of P^T and dS^T into buffer i % 2: the GEMMs that read it
    // two tiles ago were waited for by each consumer before the last tile's barrier
    unsigned char* const pt_tile = sm.base + Tiles::pt_offset(i & 1);
    unsigned char* const ds_tile = sm.base + Tiles::ds_offset(i & 1);
    store_transposed_fragments<typename Tiles::PT, kRows>(pt_tile, pt, warp_key0, row0);
    store_transposed_fragments<typename Tiles::PT, kRows>(ds_tile, dst, warp_key0, row0);
    bar_sync(kHalvesBarrier, 256);

    // 4. dQ, then dV and dK, on this consumer's columns, contracting over all 64 keys /
    // query rows. dQ first: its atomics then run while the tensor cores make dV and dK
    // (both consumers reach this point together, so atomics issued after all three GEMMs
    // would leave the tensor cores idle)
    const uint32_t ds_addr = smem_address(ds_tile);
    [[maybe_unused]] float dq[1][kHalfD / 8][4];
    if constexpr (kDq) issue_gemm_ss_mn_major<T, kHalfD, BN>(dq[0], ds_addr, k_cols,
                                                              Tiles::K::kBlockBytes);
    issue_gemm_ss_b_mn_major<T, kHalfDv, BM>(dv[0], smem_address(pt_tile), Tiles::PT::kBlockBytes,
                                             do_tile + dv_block * Tiles::DO::kBlockBytes,
                                             Tiles::DO::kBlockBytes);
    issue_gemm_ss_b_mn_major<T, kHalfD, BM>(dk[0], ds_addr, Tiles::PT::kBlockBytes,
                                            q_tile + d_block * Tiles::Q::kBlockBytes,
                                            Tiles::Q::kBlockBytes);
    if constexpr (kDq) {
      wgmma_wait<2>();
      fence_operand(dq[0]);
      Dq::add(a, n, b, h, q0, cwarp, dq);  // unscaled; dq_convert_kernel applies the scale
    }
    wgmma_wait<0>();  // dV and dK: this stage's Q and dO have been read
    fence_operand(dv[0]);
    fence_operand(dk[0]);
    mbarrier_arrive(&sm.empty[stage]);
  }
  const int key_row = 16 * (cwarp % 4);
  store_key_gradients(a, n, b, hk, k0, key_row, consumer * kHalfD, dk, key_row,
                      consumer * kHalfDv, dv);
}

}  // namespace fg
