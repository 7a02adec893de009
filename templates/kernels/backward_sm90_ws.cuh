// The warp-specialised backward on Hopper (sm_90a): backward_sm90.cuh's math (one CTA per
// 128 keys, two warpgroups of 64 keys holding dK and dV in registers, the five GEMMs on
// warpgroup MMA), with the loads and the dQ sums moved off the math warpgroups.
//
// Why (PERF.md, issue 8's eighth step): in backward_sm90.cuh every thread of the CTA
// meets at two CTA barriers per Q tile (the next stage has landed; dS^T is complete for
// dQ), waits there for the slowest load, and then spends its own issue slots on the lse /
// delta copies and on 16-byte fp32 atomics for its dQ fragments. Here:
//   - warpgroup 0 is the producer (40 registers). Its warp 0 fills Stages Q / dO stages
//     by TMA (lane 0: one box per 64 columns) with the rows' lse and delta beside them
//     (cp.async from the warp's 32 lanes: a row block of a [B, H, N] fp32 tensor is only
//     4-byte aligned), each stage's `full` mbarrier completing when all have landed; it
//     also loads K and V once, by TMA. Its warp 1 writes dQ: when the consumers have put a
//     tile's dQ into shared memory it adds the whole tile to the fp32 accumulator with one
//     bulk reduction (tma.cuh), where each consumer thread issued 8 atomics. It walks the
//     Q tiles itself, as warp 0 does, for each tile's destination: handed over through
//     shared memory, that 8-byte slot drew racecheck reports (PERF.md);
//   - warpgroups 1 and 2 (the consumers, 232 registers) each own 64 keys. Per Q tile they
//     wait for its stage's `full` barrier, run backward_sm90.cuh's steps 1-4, release the
//     stage on its `empty` barrier once dV += P^T dO and dK += dS^T Q have read it, and
//     hand their dQ fragments to warp 1 through shared memory.
// The consumers still meet once per tile (a named barrier: dQ = dS K needs both
// warpgroups' rows of dS^T); dS^T is double-buffered so that nothing else waits there.
// Only a padded batch whose Q, dO, K and V the TMA engine can address runs this kernel
// (encode_maps); the host runs backward_sm90.cuh's kernel for the rest.
#pragma once
#include "backward_sm90.cuh"

namespace fg {

// What the loader tells the consumers about the Q tile in a stage (only it walks the
// tiles: key_tile_walk's state and its mask classification stay out of the consumers'
// registers and issue slots). h < 0: the walk has ended.
struct alignas(16) StagedTile {
  int h, q0;
  TileMask mask;
  int last_of_head;  // the head's parameter gradients are flushed after this tile
};

// Host: the tensor maps of a padded batch's Q, dO (boxes of bm rows), K and V (bn rows),
// for the warp-specialised backward kernels; false for a packed or paged batch or where
// TMA cannot address one of them (the host then runs a kernel that loads with cp.async)
template <int D, int Dv, class T>
inline bool encode_backward_maps(BackwardTensorMaps& maps, const BackwardArgs<T>& a, int bm,
                                 int bn) {
  const Shape& n = a.shape;
  return !n.varlen() && !n.paged() &&  // (the maps describe whole, unpaged tensors)
         encode_tensor_map(&maps.q, a.q, n.batch, n.heads, n.q_len, D, bm) &&
         encode_tensor_map(&maps.dout, a.dout, n.batch, n.heads, n.q_len, Dv, bm) &&
         encode_tensor_map(&maps.k, a.k, n.batch, n.kv_heads, n.kv_len, D, bn) &&
         encode_tensor_map(&maps.v, a.v, n.batch, n.kv_heads, n.kv_len, Dv, bn);
}

template <int D, int Dv, int BM, int BN, int Stages>
struct BackwardTilesSm90Ws : BackwardTilesSm90<D, Dv, BM, BN> {
  using Base = BackwardTilesSm90<D, Dv, BM, BN>;
  using typename Base::DO;
  using typename Base::DS;
  using typename Base::K;
  using typename Base::Q;
  using typename Base::V;
  static constexpr int kConsumers = 2, kStages = Stages;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // 40 / 232: at 24 / 240 (the forward's) the producer spilled (the walk and the lse /
  // delta address math), at 56 / 224 document's consumers did (PERF.md, issue 8's eighth step)
  static constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;
  // K, V, the Q/dO stages, two dS^T buffers, the dQ tile (fp32), each stage's lse and
  // delta and StagedTile, then the mbarriers (full and empty per stage, K/V's); +1024 to
  // align the start on a swizzle pattern
  static constexpr int kStageOffset = K::kBytes + V::kBytes;
  static constexpr int kDsOffset = kStageOffset + Stages * (Q::kBytes + DO::kBytes);
  static constexpr int kDqOffset = kDsOffset + 2 * DS::kBytes;
  static constexpr int kStatsOffset = kDqOffset + BM * D * int(sizeof(float));
  static constexpr int kInfoOffset = kStatsOffset + Stages * 2 * BM * int(sizeof(float));
  static constexpr int kBarrierOffset = kInfoOffset + Stages * int(sizeof(StagedTile));
  static constexpr int kSmemBytes = kBarrierOffset + (2 * Stages + 1) * 8 + 1024;
  template <class T>
  static constexpr int smem_bytes() { return kSmemBytes; }
  template <class T>
  static bool encode_maps(BackwardTensorMaps& maps, const BackwardArgs<T>& a) {
    return encode_backward_maps<D, Dv>(maps, a, BM, BN);
  }
  static_assert(BN == 64 * kConsumers, "each consumer owns 64 keys");
  static_assert(Stages >= 2, "a stage fills while the consumers read the other");
  static_assert(kSmemBytes <= 227 * 1024, "the CTA's shared memory");
  static_assert(K::kBytes + V::kBytes < (1 << 20), "an mbarrier's transaction count");
  // the pool is what __launch_bounds__(kThreads, 1) gives the CTA (168 x 384)
  static_assert(kProducerRegisters * 128 + kConsumerRegisters * 128 * kConsumers <=
                    (65536 / kThreads) / 8 * 8 * kThreads,
                "the reallocated registers fit the CTA's pool");
};

// The shared memory both warp-specialised backward kernels share the layout of (this
// one's, and backward_sm90_split.cuh's): K, V, the Q/dO stages, each stage's lse, delta
// and StagedTile, and the mbarriers (full and empty per stage, K/V's), at the offsets
// Tiles gives; the start aligned on a swizzle pattern.
template <class Tiles, class T>
struct WsBackwardSmem {
  static constexpr int Stages = Tiles::kStages, BM = Tiles::kBM;
  unsigned char* base;
  T* sK;
  T* sV;
  float* sLse;         // [Stages][BM]
  float* sDelta;       // [Stages][BM]
  StagedTile* staged;  // [Stages]
  uint64_t* full;      // [Stages]
  uint64_t* empty;     // [Stages]
  uint64_t* kv_full;
  __device__ __forceinline__ explicit WsBackwardSmem(unsigned char* raw)
      : base(raw + ((1024 - (smem_address(raw) & 1023)) & 1023)),
        sK(reinterpret_cast<T*>(base)),
        sV(reinterpret_cast<T*>(base + Tiles::K::kBytes)),
        sLse(reinterpret_cast<float*>(base + Tiles::kStatsOffset)),
        sDelta(sLse + Stages * BM),
        staged(reinterpret_cast<StagedTile*>(base + Tiles::kInfoOffset)),
        full(reinterpret_cast<uint64_t*>(base + Tiles::kBarrierOffset)),
        empty(full + Stages),
        kv_full(empty + Stages) {}
  __device__ __forceinline__ unsigned char* q(int stage) const {
    return base + Tiles::kStageOffset + stage * Tiles::Q::kBytes;
  }
  __device__ __forceinline__ unsigned char* dout(int stage) const {
    return base + Tiles::kStageOffset + Stages * Tiles::Q::kBytes + stage * Tiles::DO::kBytes;
  }
  // a consumer: tile i's stage has landed; what the producer says of the tile in it
  __device__ __forceinline__ StagedTile wait_for_tile(int i) const {
    mbarrier_wait(&full[i % Stages], (i / Stages) & 1);
    return staged[i % Stages];
  }
  // thread 0, before the CTA's one __syncthreads: `consumers` warpgroups release a stage
  __device__ __forceinline__ void init_barriers(int consumers) const {
#pragma unroll
    for (int s = 0; s < Stages; ++s) {
      mbarrier_init(&full[s], 1 + 32);  // lane 0's TMA arrival, and warp 0's lse / delta copies
      mbarrier_init(&empty[s], 128 * consumers);  // the consumers' threads
    }
    mbarrier_init(kv_full, 1);
    mbarrier_init_fence();
  }
};

// The producer's warp 0 in both warp-specialised backward kernels: K and V once (lane 0,
// by TMA), then the walk over the Q tiles, tile i into stage i % Stages once the consumers
// have released it: Q and dO by TMA (lane 0), the rows' lse and delta by cp.async from the
// 32 lanes, and what the consumers need to know of the tile (StagedTile). The walk's end
// is a stage with h = -1.
template <class V, class Tiles, class T>
__device__ __forceinline__ void load_query_tiles(const BackwardArgs<T>& a,
                                                 const typename V::Params& p,
                                                 const BackwardCta<T>& cta,
                                                 const BackwardTensorMaps& maps,
                                                 const WsBackwardSmem<Tiles, T>& sm) {
  constexpr int BM = Tiles::kBM, BN = Tiles::kBN, D = Tiles::kD, Dv = Tiles::kDv;
  constexpr int Stages = Tiles::kStages;
  const Shape& n = cta.n;
  const int b = cta.b, hk = cta.hk, lane = threadIdx.x & 31;
  if (lane == 0) {
    mbarrier_arrive_expecting(sm.kv_full, Tiles::K::kBytes + Tiles::V::kBytes);
    tma_load_tile<BN, D>(sm.sK, maps.k, cta.k0, hk, b, sm.kv_full);
    tma_load_tile<BN, Dv>(sm.sV, maps.v, cta.k0, hk, b, sm.kv_full);
  }
  int i = 0;  // Q tiles so far: tile i is in stage i % Stages
  for (auto walk = key_tile_walk<V, BM, BN>(a, p, n, b, hk, cta.n_block);; ++i) {
    const int stage = i % Stages, round = i / Stages;
    mbarrier_wait<true>(&sm.empty[stage], (round & 1) ^ 1);  // the consumers are done with it
    if (walk.done()) {  // the end, as a stage with no tile
      if (lane == 0) {
        sm.staged[stage].h = -1;
        mbarrier_arrive(&sm.full[stage]);
      }
      mbarrier_arrive_on_copies(&sm.full[stage]);
      break;
    }
    const int h = cta.group * hk + walk.r, q0 = TileRow::tile_of(walk.entry) * BM;
    const TileMask mask = walk.mask;
    walk.advance();
    if (lane == 0) {
      sm.staged[stage] = {h, q0, mask, walk.done() || cta.group * hk + walk.r != h};
      // (the arrival releases the write above to the consumers)
      mbarrier_arrive_expecting(&sm.full[stage], Tiles::Q::kBytes + Tiles::DO::kBytes);
      tma_load_tile<BM, D>(sm.q(stage), maps.q, q0, h, b, &sm.full[stage]);
      tma_load_tile<BM, Dv>(sm.dout(stage), maps.dout, q0, h, b, &sm.full[stage]);
    }
    // load_rows_f32 indexes its 32 threads by threadIdx.x: the loader must be warp 0
    const int64_t rows = n.row(b, h, q0);
    load_rows_f32<BM, 32>(sm.sLse + stage * BM, a.lse + rows, n.q_len - q0, a.lse);
    load_rows_f32<BM, 32>(sm.sDelta + stage * BM, a.delta + rows, n.q_len - q0, a.delta);
    mbarrier_arrive_on_copies(&sm.full[stage]);
  }
  cp_async_commit();
  cp_async_wait<0>();  // no copy outlives the thread that issued it
}

// Named barriers of the consumers: dS^T of both is in shared memory; (with warp 1) the
// dQ tile is in shared memory; warp 1 has read the last one out.
constexpr int kDsBarrier = 1, kDqFullBarrier = 2, kDqFreeBarrier = 3;
constexpr int kDqWriterThreads = 256 + 32;  // the consumers and the producer's warp 1

// Template arguments as backward_kernel_sm90's, plus Stages (Q/dO stages).
template <class V, class T, int D, int Dv, int BM, int BN, int Stages, bool kDq, bool kDropout,
          bool kParamGrads>
__global__ void __launch_bounds__(BackwardTilesSm90Ws<D, Dv, BM, BN, Stages>::kThreads, 1)
backward_kernel_sm90_ws(const BackwardArgs<T> a, const typename V::Params p,
                        const typename V::Grads g, const __grid_constant__ BackwardTensorMaps maps) {
  using Tiles = BackwardTilesSm90Ws<D, Dv, BM, BN, Stages>;
  using Rows = typename Tiles::Rows;
  using Dq = DqFragments<Rows, BM, D>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WsBackwardSmem<Tiles, T> sm(smem_raw);
  auto sdS = [&](int buffer) { return sm.base + Tiles::kDsOffset + buffer * Tiles::DS::kBytes; };
  float* sdQ = reinterpret_cast<float*>(sm.base + Tiles::kDqOffset);  // Dq's order

  const BackwardCta<T> cta(a, BN);
  if (cta.past_keys()) return;  // (a padded batch's grid has no such CTA)
  const Shape& n = cta.n;
  const int b = cta.b, hk = cta.hk, k0 = cta.k0;
  if (threadIdx.x == 0) sm.init_barriers(Tiles::kConsumers);
  __syncthreads();  // the barriers are initialised; the CTA never meets again
  const int warpgroup = threadIdx.x / 128, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  if (warpgroup == 0) {
    release_registers<Tiles::kProducerRegisters>();
    if (warp == 0) {  // the loads, and the walk over the Q tiles
      load_query_tiles<V>(a, p, cta, maps, sm);
    } else if (kDq && warp == 1) {  // dQ's sums, over the same tiles as warp 0's walk
      for (auto walk = key_tile_walk<V, BM, BN>(a, p, n, b, hk, cta.n_block); !walk.done();) {
        float* const destination =
            Dq::tile(a, n, b, cta.group * hk + walk.r, TileRow::tile_of(walk.entry) * BM);
        walk.advance();
        bar_sync(kDqFullBarrier, kDqWriterThreads);  // the consumers' dQ of the tile is in
        if (lane == 0) {
          bulk_reduce_add_f32(destination, sdQ, BM * D * int(sizeof(float)));
          bulk_commit();
          bulk_wait_read<0>();
        }
        __syncwarp();
        // the consumers may write the next tile's dQ (they wait for this before every
        // tile but the first, so the last tile's is left out)
        if (!walk.done()) bar_arrive(kDqFreeBarrier, kDqWriterThreads);
      }
      if (lane == 0) bulk_wait<0>();
    }
    return;
  }

  set_registers<Tiles::kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int cwarp = warp - 4;  // among the consumers' 8 warps: Rows' and Dq's warp index
  const KeyBlockGemms<Tiles, T> gemms(sm.sK, sm.sV, consumer);  // this consumer's 64 keys
  const int warp_key0 = 64 * consumer + 16 * (cwarp % 4);  // the warp's 16 keys in the tile

  float dk[1][D / 8][4], dv[1][Dv / 8][4];
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

    // 1. S^T and dP^T for this consumer's keys x the tile's query rows
    float s[1][BM / 8][4], dp[1][BM / 8][4];
    gemms.scores(s[0], dp[0], q_tile, do_tile);

    // 2. P^T into s, dS^T into dp
    transposed_gradients<V, BM, kDropout, kParamGrads>(a, p, g, sums, n, tile.mask, b, h, q0, k0,
                                                       warp_key0, sm.sLse + stage * BM,
                                                       sm.sDelta + stage * BM, s[0], dp[0]);
    if constexpr (kParamGrads && V::kHasParamGrads) {  // at each change of head (uniform)
      if (tile.last_of_head) V::flush_param_grads(p, g, sums, b, h, n.q_len, n.kv_len);
    }
    uint32_t pt[BM / 16][4], dst[BM / 16][4];
    accumulator_to_a<T>(pt, s[0]);
    accumulator_to_a<T>(dst, dp[0]);

    // 3. dV += P^T dO, dK += dS^T Q, running while dS^T goes to shared memory
    gemms.key_gradients(dv[0], dk[0], pt, dst, q_tile, do_tile);

    // 4. dQ = dS K (unscaled; the host multiplies by the softmax scale), to warp 1
    if constexpr (kDq) {
      Tiles::store_ds_transposed(sdS(i & 1), dst, warp_key0);
      // both consumers' keys of dS^T are in; the other buffer's dQ GEMMs (two tiles ago)
      // were waited for before each consumer came here last time
      bar_sync(kDsBarrier, 256);
      float dq[1][Tiles::kDqCols / 8][4];
      gemms.dq(dq[0], smem_address(sdS(i & 1)));
      wgmma_wait<1>();  // dV and dK: this stage's Q and dO have been read
      fence_operand(dv[0]);
      fence_operand(dk[0]);
      mbarrier_arrive(&sm.empty[stage]);
      wgmma_wait<0>();
      fence_operand(dq[0]);
      if (i > 0) bar_sync(kDqFreeBarrier, kDqWriterThreads);  // warp 1 has read the last tile
      Dq::to_shared(sdQ, cwarp, dq);
      fence_proxy_async();  // for the bulk reduction, which reads through the async proxy
      bar_arrive(kDqFullBarrier, kDqWriterThreads);
    } else {
      wgmma_wait<0>();
      fence_operand(dv[0]);
      fence_operand(dk[0]);
      mbarrier_arrive(&sm.empty[stage]);
    }
  }
  const int key_row = 64 * consumer + 16 * (cwarp % 4);
  store_key_gradients(a, n, b, hk, k0, key_row, 0, dk, key_row, 0, dv);
}

}  // namespace fg
