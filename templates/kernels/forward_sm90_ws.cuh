// The warp-specialised forward on Hopper (sm_90a): forward_sm90.cuh's math, with the
// loads moved to a producer warpgroup and the per-tile CTA barrier replaced by mbarriers
// (pipeline.cuh), so that the consumer warpgroups stop running in lockstep.
//
// Why (PERF.md, issue 8): in forward_sm90.cuh both warpgroups of a CTA meet at the
// barrier that hands each K/V stage over, so they issue their GEMMs together and run
// their softmax together, and the tensor cores idle through every softmax. Here:
//   - warpgroup 0 (the producer) walks the K/V tiles and fills Stages shared-memory
//     stages, each stage's `full` mbarrier completing when its copies have landed. A
//     padded batch's tiles are loaded by one thread with TMA (tma.cuh: one instruction
//     per 64-column box, the engine swizzles and zero-fills), and the producer keeps 24
//     registers; the general instance (paged, varlen, split-KV) and K / V that TMA cannot
//     address load with cp.async from all 128 threads (every load path of KvStream),
//     which needs 56. The rest go to the consumers (setmaxnreg);
//   - warpgroups 1 and 2, and 3 at d = 64 (the consumers, 64 query rows each; 240 or 224
//     registers, 160 with three) wait for a stage's `full` barrier, compute
//     S = Q K^T, mask, softmax and O += P V as forward_sm90.cuh does, and arrive on its
//     `empty` barrier;
//   - the consumers take turns to issue their GEMMs (a named barrier each, a ring): a
//     turn issues Q K^T of this tile and P V of the previous one, and one consumer's
//     softmax runs while the others' GEMMs run;
//   - inside a consumer (the TMA instance), this tile's softmax waits for its Q K^T only
//     and runs while the previous tile's P V still accumulates into O; O is rescaled
//     after it;
//   - decoding (a general call of at most 64 query rows: forward.cu.j2 DecodeTiles) runs
//     one consumer, without turns and without moving registers: two or three consumers
//     would compute 128 or 192 rows for the few real ones (PERF.md, "decoding with one
//     consumer").
// Persistent (kPersistent, the default of a padded batch at d <= 128): one CTA per SM
// runs many Q tiles (units, drawn from a counter after its first by the producer's card
// writer, which hands each unit's place and tile row to the loading thread and the
// consumers: UnitCard). The producer loads each consumer's Q rows by TMA into Q slots
// (two: a unit ahead; one at d = 256: as soon as that consumer's last Q K^T of a unit is
// done), and the next unit's K/V while the consumers finish this one's; a consumer
// carries its unit's last P V into the next unit's first turn and stores the unit's O
// while that turn's Q K^T runs, at d = 128 through an output stage and TMA stores
// (OStage: the stages and two Q slots take the third K/V stage). So a unit no longer
// pays a CTA's start (Q and K's first arrival, a Q K^T and softmax with no partner) and
// end (the last P V and the epilogue with idle tensor cores), ~3 tiles of time at d =
// 128 (PERF.md, issue 8's seventeenth, twentieth and twenty-first steps).
#pragma once
#include "forward.cuh"
#include "pipeline.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace fg {

template <int D, int Dv, int BN, int Stages, int Consumers = 2, bool Persistent = false,
          int QSlots = 1, bool OStage = false>
struct ForwardTilesSm90Ws {
  // two consumers of 64 query rows, or three at d = 64 (plan/tiles.py ws_consumers): there
  // a 128-key tile has half the GEMM work of d = 128 under the same softmax, and a third
  // consumer's GEMMs keep the tensor cores busy through the other two's softmax
  static constexpr int kConsumers = Consumers;
  static constexpr int BM = 64 * kConsumers;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // The producer's registers. kTma: one thread issues every TMA load and needs few: 24 in
  // the grid's CTA. Persistent, its unit loop needs more: 40 with two consumers, which get
  // 232 either way (at 32 the loop with two Q slots and split K/V barriers spilled 27
  // words in the sliding window's); 32 with three, which keeps them 160 (at 24 it spilled
  // up to 72 bytes; at 32, with the Q rows a unit ahead, a few words that its one thread
  // reloads from L1 per tile, the forward level with the kernel before). Loading with
  // cp.async, its 128 threads' address math needs 56 (40 spilled), but with three
  // consumers it keeps 32 (ptxas reported no spill), since at 152 each ptxas serialised
  // their wgmmas (C7512) and at 160 it does not.
  template <bool kTma>
  static constexpr int kProducerRegisters =
      kTma ? (Persistent ? (kConsumers == 2 ? 40 : 32) : 24) : kConsumers == 3 ? 32 : 56;
  // the pool is what __launch_bounds__(kThreads, 1) gives the CTA (168 x 384 with two
  // consumers, 128 x 512 with three); asking for more than it holds leaves
  // setmaxnreg.inc waiting for ever
  static constexpr int kPool = (65536 / kThreads) / 8 * 8 * kThreads;
  // the consumers share the rest, in multiples of 8 (setmaxnreg's unit), at most 240:
  // 240 / 224 with two consumers (TMA / cp.async producer; 232 persistent), 160 with three
  template <bool kTma>
  static constexpr int kConsumerRegisters =
      (kPool - kProducerRegisters<kTma> * 128) / (128 * kConsumers) / 8 * 8 > 240
          ? 240
          : (kPool - kProducerRegisters<kTma> * 128) / (128 * kConsumers) / 8 * 8;
  using Q = SwizzledTile<64, D>;  // one per consumer
  using K = SwizzledTile<BN, D>;
  using V = SwizzledTile<BN, Dv>;
  // Page bands (schedule.cuh PageBand) for a paged tile across pages: in the one-consumer
  // decoding instance, whose producer may hold 255 registers; with two consumers (a
  // producer of 56) where ptxas (sm_90a, every shipped spec) found no spill added, with the
  // band loop unrolled by 4 (fully, dense d = 128 spilled 16 bytes): prefill from pages of
  // 16 / 24 rows -20 to -23 % at d = 128. Left out: dropout (60 bytes at d = 64), two
  // consumers at d = 64, which the planner gives only to consumers that hold more per
  // element (ws_consumers: dilated 68 -> 156 bytes). Three consumers (d = 64, a producer
  // of 32) have them in an instance of their own for paged calls (kPagedCall, below): in
  // the shared one the bands took 13-15 % off pages of 16 but cost a packed batch, which
  // never reads a page, 4.8 %, and still 2-5 % with the producer's paged and unpaged
  // loops apart (PERF.md, "next-call-2 measured", "the paged instance").
  template <bool kDropout, bool kPagedCall = false>
  static constexpr bool kPageBands =
      kConsumers == 1 || (!kDropout && (kConsumers == 2 ? D > 64 : kPagedCall));
  // whether a paged call runs an instance of its own (the kernel's kPagedCall): where the
  // bands are left out of the shared instance for the other calls' sake only
  template <bool kDropout>
  static constexpr bool kPagedInstance = kPageBands<kDropout, true> && !kPageBands<kDropout>;
  template <class Variant, class T, bool kGeneral, bool kDropout, bool kPagedCall = false>
  using Stream = KvStream<Variant, T, D, Dv, BM, BN, 128, kGeneral, SwizzledRows,
                          kPageBands<kDropout, kPagedCall>, kConsumers == 1 ? 0 : 4>;
  // Persistent: QSlots Q buffers per consumer, which the producer fills by TMA (two where
  // shared memory holds them, at d = 64 and 128: the next unit's Q lands under this one;
  // else one, refilled as soon as its consumer's last Q K^T of a unit is done)
  static constexpr int kQSlots = Persistent ? QSlots : 1;
  static constexpr int kQBytes = kQSlots * kConsumers * Q::kBytes;
  // Persistent, OStage: an output stage per consumer, through which a unit's O goes to
  // memory by TMA stores that nobody waits for (store_output_tma). From the fragments a
  // consumer's store took 1.98 us of its time at each unit, on the path to its next
  // turn; through the stage 1.20 (PERF.md, issue 8's twenty-first step)
  using O = SwizzledTile<64, Dv>;
  static constexpr bool kOStage = Persistent && OStage;
  static constexpr int kOBytes = kOStage ? kConsumers * O::kBytes : 0;
  static constexpr int kBarrierOffset = kQBytes + Stages * (K::kBytes + V::kBytes) + kOBytes;
  // the Q slots, the K/V stages and the output stages, then a full and an empty mbarrier
  // per stage for its K and for its V (the kernel's comment), and, persistent, per Q slot
  // and consumer a full and an empty mbarrier and the unit's card (UnitCard, 40 bytes),
  // and the same for the card on its way from the producer's card writer; +1024 to align
  // the start on a swizzle pattern
  static constexpr int kCardBytes = 40;
  static constexpr int kSmemBytes =
      kBarrierOffset + 4 * Stages * 8 +
      (Persistent ? (2 * 8 + kCardBytes) * (kQSlots * kConsumers + 1) : 0) + 1024;
  template <class T>
  static constexpr int smem_bytes() { return kSmemBytes; }
  static_assert(kProducerRegisters<true> * 128 + kConsumerRegisters<true> * 128 * kConsumers <= kPool &&
                    kProducerRegisters<false> * 128 + kConsumerRegisters<false> * 128 * kConsumers <= kPool,
                "the reallocated registers fit the CTA's pool");
  // one consumer: decoding's instances (forward.cu.j2 DecodeTiles), general or persistent
  static_assert(kConsumers >= 1 && kConsumers <= 3, "one to three consumers");
  // Host: the tensor maps of a padded batch's K and V in boxes of BN rows (persistent: and
  // Q's, in boxes of a consumer's 64 rows); false where the TMA engine cannot address
  // them (the call then runs the cp.async instance)
  template <class T>
  static bool encode_maps(KvTensorMaps& maps, const ForwardArgs<T>& a) {
    const Shape& n = a.shape;
    return encode_tensor_map(&maps.k, a.k, n.batch, n.kv_heads, n.kv_len, D, BN) &&
           encode_tensor_map(&maps.v, a.v, n.batch, n.kv_heads, n.kv_len, Dv, BN) &&
           (!Persistent || encode_tensor_map(&maps.q, a.q, n.batch, n.heads, n.q_len, D, 64)) &&
           (!kOStage || encode_tensor_map(&maps.o, Strided4<const T>{a.out.data, a.out.batch,
                                                                    a.out.head, a.out.row},
                                          n.batch, n.heads, n.q_len, Dv, 64));
  }
  static_assert(Stages >= 2 && BN % 16 == 0 && BN <= 256, "k16 steps of P V; N <= 256");
  static_assert(kSmemBytes <= 227 * 1024, "the CTA's shared memory");
  static_assert(K::kBytes + V::kBytes < (1 << 20) && kConsumers * Q::kBytes < (1 << 20),
                "an mbarrier's transaction count");
  static_assert(kQSlots >= 1 && kQSlots <= 2, "one or two Q slots");
  // up to d = 256 a consumer's O (Dv / 2 floats per thread), one score tile (BN / 2) and
  // the P of the previous one (BN / 4) fit its registers: at d = 256 with BN = 64 (the plan)
  static_assert(D % 64 == 0 && Dv % 64 == 0 && D <= 256 && Dv <= 256, "128-byte rows, d <= 256");
};

// The output through shared memory, for the consumers below: 64 rows, whole 128-byte
// lines to memory. From the fragments directly (store_output) each warp instruction
// writes 4 or 8 bytes to each of 8 rows, 8 L1 wavefronts an instruction: a consumer's
// 64 x 128 bf16 O took 1.3-1.8 us after its last P V with the tensor cores idle, a
// twentieth of a 16-tile CTA (PERF.md, issue 8's seventeenth step). Here each thread
// writes its pairs into `stage`, 64 rows of kPitch bytes with the 16-byte chunks of each
// 128 bytes swizzled by the row (conflict-free for the fragments' 8 rows), the consumer's
// 128 threads meet on `barrier`, and each copies 16-byte chunks of whole rows. A row
// wider than the stage goes in column windows: this call stores columns
// [W * window, W * (window + 1)) as U (T or fp32), scaled per row by scale[r].
template <class U, int W, int DT, class RowAt>
__device__ __forceinline__ void store_window_staged(const float (&o)[DT][4],
                                                    const float (&scale)[2], int window,
                                                    unsigned char* stage, int barrier,
                                                    int rows_valid, RowAt row_at) {
  constexpr int kPitch = W * int(sizeof(U)), kChunks = kPitch / 16;
  static_assert(kPitch % 128 == 0 && W % 8 == 0, "whole swizzled 128-byte groups per row");
  const int tid = threadIdx.x & 127, lane = tid & 31, g = lane >> 2, t = lane & 3;
  auto offset = [](int row, int byte) {
    return row * kPitch + ((((byte >> 4) ^ row) & 7) | ((byte >> 4) & ~7)) * 16 + (byte & 15);
  };
  bar_sync(barrier, 128);  // the stage is free: every warp is past what read it before
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) {  // (all of them, so that o is indexed by constants)
    if (8 * dt / W != window) continue;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = 16 * (tid >> 5) + g + 8 * r;
      const int byte = (8 * dt + 2 * t - window * W) * int(sizeof(U));
      const float x = o[dt][2 * r] * scale[r], y = o[dt][2 * r + 1] * scale[r];
      if constexpr (sizeof(U) == 4) {
        *reinterpret_cast<float2*>(stage + offset(row, byte)) = make_float2(x, y);
      } else {
        *reinterpret_cast<uint32_t*>(stage + offset(row, byte)) = pack2<U>(x, y);
      }
    }
  }
  bar_sync(barrier, 128);
#pragma unroll
  for (int i = tid; i < 64 * kChunks; i += 128) {
    const int row = i / kChunks, chunk = i % kChunks;
    if (row < rows_valid)
      *reinterpret_cast<uint4*>(reinterpret_cast<unsigned char*>(row_at(row) + window * W) +
                                16 * chunk) =
          *reinterpret_cast<const uint4*>(stage + offset(row, 16 * chunk));
  }
}

// The widest window of columns (a multiple of 8 dividing Dv) whose rows fit `bytes`
__host__ __device__ constexpr int staged_window(int dv, int bytes, int element_bytes) {
  int w = dv;
  while (w > 8 && (64 * w * element_bytes > bytes || dv % w != 0)) w -= 8;
  return w;
}

// store_output for a consumer of 64 rows from rows0 (its warps' rows: row0), through
// StageBytes of shared memory at `stage` (free when called but for the consumer's own
// GEMMs, which are waited for). A split's partial result keeps store_output.
template <bool kDropout, bool kGeneral, int StageBytes, class T, int DT, int NT>
__device__ __forceinline__ void store_output_staged(const float (&o)[1][DT][4],
                                                    const OnlineSoftmax<NT> (&softmax)[1],
                                                    const ForwardArgs<T>& a, const Shape& n,
                                                    int b, int h, int row0, int rows0,
                                                    unsigned char* stage, int barrier) {
  if (kGeneral && a.splits > 1)
    return store_output<kDropout, kGeneral>(o, softmax, a, n, b, h, row0);
  constexpr int Dv = 8 * DT;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float inv_sum[2], lse[2];
  output_row_scales<kDropout>(softmax[0], a, inv_sum, lse);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int q = row0 + g + 8 * r;
    if (t == 0 && q < n.q_len) a.lse[output_row<kGeneral>(n, b, h, q)] = lse[r];
  }
  const int rows_valid = n.q_len - rows0;
  constexpr int kW = staged_window(Dv, StageBytes, int(sizeof(T)));
#pragma unroll
  for (int w = 0; w < Dv / kW; ++w)
    store_window_staged<T, kW>(o[0], inv_sum, w, stage, barrier, rows_valid, [&](int row) {
      return a.out.at(b, h, (kGeneral ? n.q_start : 0) + rows0 + row);
    });
  if (a.out_f32 != nullptr) {
    constexpr int kW32 = staged_window(Dv, StageBytes, 4);
    auto f32_row = [&](int row) {
      return a.out_f32 + output_row<kGeneral>(n, b, h, rows0 + row) * Dv;
    };
#pragma unroll
    for (int w = 0; w < Dv / kW32; ++w)
      store_window_staged<float, kW32>(o[0], inv_sum, w, stage, barrier, rows_valid, f32_row);
  }
}

// store_output for a consumer of 64 rows from rows0 of a padded batch, through its output
// stage (a SwizzledTile<64, Dv>) and TMA stores (tma.cuh) that the consumer's thread 0
// issues and nobody waits for but the next call: its 128 threads write their pairs into
// the stage (32 shared stores a thread at d = 128, each warp instruction one wavefront,
// where store_output's 32 global stores take 8 each), meet on `barrier`, and go on.
template <bool kDropout, class T, int DT, int NT>
__device__ __forceinline__ void store_output_tma(const float (&o)[1][DT][4],
                                                 const OnlineSoftmax<NT> (&softmax)[1],
                                                 const ForwardArgs<T>& a, const Shape& n, int b,
                                                 int h, int rows0, unsigned char* stage,
                                                 int barrier, const CUtensorMap& map) {
  constexpr int Dv = 8 * DT;
  static_assert(DT % 2 == 0, "two 8-column blocks per stmatrix");
  using Stage = SwizzledTile<64, Dv>;
  const int tid = threadIdx.x & 127, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int warp_row = 16 * (tid >> 5);  // the warp's first row of the 64
  float inv_sum[2], lse[2];
  output_row_scales<kDropout>(softmax[0], a, inv_sum, lse);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int q = rows0 + warp_row + g + 8 * r;
    if (t == 0 && q < n.q_len) a.lse[output_row<false>(n, b, h, q)] = lse[r];
  }
  if (tid == 0) bulk_wait_read<0>();  // the stage's last store has read it (a unit ago)
  bar_sync(barrier, 128);
  // by stmatrix, two 8-column blocks of the warp's 16 rows an instruction: lane l gives
  // row l % 8 (+ 8 for the odd matrices) of block dt + l / 16; the 8 rows of a matrix
  // land in 8 chunks of the swizzle, so no bank conflict
  const int m = lane >> 3, row = warp_row + (lane & 7) + 8 * (m & 1);
#pragma unroll
  for (int dt = 0; dt < DT; dt += 2) {
    auto pair = [&](int j, int r) {
      return pack2<T>(o[0][j][2 * r] * inv_sum[r], o[0][j][2 * r + 1] * inv_sum[r]);
    };
    stmatrix_x4(stage + Stage::chunk_offset(row, 8 * (dt + (m >> 1))), pair(dt, 0),
                pair(dt, 1), pair(dt + 1, 0), pair(dt + 1, 1));
  }
  fence_proxy_async();  // the stage was written by the generic proxy; the TMA reads async
  bar_sync(barrier, 128);
  if (tid == 0) {
    tma_store_tile<64, Dv>(stage, map, rows0, h, b);
    bulk_commit();
  }
}

// Named barriers: 1 to 3, a consumer's Q rows (persistent: its output stage); 4 to 6,
// whose turn it is to issue Q K^T.
constexpr int kQBarrier = 1, kTurnBarrier = 4;

// The units of a persistent forward: (Q tile, batch * head) pairs, unit u as unit_at
// numbers it. A CTA runs unit blockIdx.x first; its card writer then draws the next from
// ForwardArgs::tickets (gridDim.x + a ticket: dynamic, so that an SM whose units were
// short takes more, where a static split of causal units left SMs idle for 230 of 1144
// us at N = 8192, PERF.md's seventeenth step).
//
// The order is made for the L2. The heads are taken in sections whose K and V fit in
// kL2SectionBytes together (16 MiB of the H100's / H200's 50 MiB), and inside a section
// the Q tiles with the most keys under a causal mask come first, each Q tile over the
// section's heads. An order over all heads at once (the longest Q tile of every head
// first) measured 0.80x the plain grid's forward at N = 2048 (PERF.md, tenth step): the
// 132 CTAs then walk 132 heads' K and V at once, ~130 MiB at d = 128, and each Q tile
// read its K/V from HBM instead of the L2, where the grid's CTAs run a head's Q tiles
// side by side.
constexpr int64_t kL2SectionBytes = int64_t(16) << 20;

template <int KvRowBytes>
__device__ __forceinline__ void unit_at(int u, int q_tiles, int heads, int kv_len,
                                        int& m_block, int& bh) {
  // the heads whose K and V fit a section: (bytes / row bytes) / keys, one 32-bit division
  // (a consumer computes this per unit, on its path; a 64-bit one is a long subroutine)
  constexpr int kSectionRows = int(kL2SectionBytes / KvRowBytes);
  const int fit = kSectionRows / (kv_len > 0 ? kv_len : 1);
  const int per_section = fit < 1 ? 1 : fit > heads ? heads : fit;
  const int section = u / (per_section * q_tiles);
  const int first = section * per_section;
  // (the last section may be short)
  const int in_section = per_section < heads - first ? per_section : heads - first;
  const int r = u - section * per_section * q_tiles;
  m_block = q_tiles - 1 - r / in_section;
  bh = first + r % in_section;
}

// Unit u of a persistent CTA (a padded batch: the general instance runs the grid)
template <int KvRowBytes, class T>
__device__ __forceinline__ ForwardCta<T, false> unit_cta(const ForwardArgs<T>& a, int block_m,
                                                         int u) {
  const int q_tiles = (a.shape.q_len + block_m - 1) / block_m;
  int m_block, bh;
  unit_at<KvRowBytes>(u, q_tiles, a.shape.batch * a.shape.heads, a.shape.kv_len, m_block, bh);
  return ForwardCta<T, false>(a, block_m, m_block, bh);
}

// A persistent unit as the producer hands it to a consumer with its Q rows: where it lies
// and its row of K/V tiles. Worked out once, by the producer's card writer, a unit or
// more ahead, instead of by every consumer and the loading thread between their units:
// there the dependent divisions of unit_at and the Cta and the mask's 64-bit interval
// arithmetic (trim_row) took 0.3-0.9 us, which the unit's first Q K^T waited for (PERF.md,
// "the unit card").
struct UnitCard {
  TileRow row;
  int unit;  // -1: no more units
  int m_block, b, h, hk;
};

template <int KvRowBytes, class V, int BM, int BN, class T>
__device__ __forceinline__ UnitCard unit_card(const ForwardArgs<T>& a,
                                              const typename V::Params& p, int u, int units) {
  if (u >= units) return UnitCard{TileRow{}, -1, 0, 0, 0, 0};
  const ForwardCta<T, false> cta = unit_cta<KvRowBytes>(a, BM, u);
  return UnitCard{cta.template tiles<V, BM, BN>(a, p, a.shape), u, cta.m_block, cta.b, cta.h,
                  cta.hk};
}

// The kinds of a consumer's step (one K/V tile): the first of its CTA (no P V pending),
// a later one of the same unit (the previous tile's P V pending), or, persistent, the
// first of a unit after another (the last P V of the unit before pending: issued before
// this Q K^T, and that unit's O stored while the Q K^T runs).
constexpr int kFirstTile = 0, kNextTile = 1, kCarriedTile = 2;

// Template arguments as forward_kernel_sm90's, with Stages (K/V stages) and Consumers
// (of 64 rows each) instead of BM, and kPersistent (a padded batch only): one CTA per SM,
// running units until the tickets run out, QSlots Q buffers per consumer (see below).
// kPagedCall: the general instance that runs only calls whose K/V is a paged cache
// (Tiles::kPagedInstance), with page bands the shared one leaves out.
template <class V, class T, int D, int Dv, int BN, int Stages, int Consumers, bool kPersistent,
          int QSlots, bool OStage, bool kDropout, bool kExactP, bool kGeneral,
          bool kPagedCall = false>
__global__ void __launch_bounds__(ForwardTilesSm90Ws<D, Dv, BN, Stages, Consumers>::kThreads, 1)
forward_kernel_sm90_ws(const ForwardArgs<T> a, const typename V::Params p,
                       const __grid_constant__ KvTensorMaps maps) {
  using Tiles = ForwardTilesSm90Ws<D, Dv, BN, Stages, Consumers, kPersistent, QSlots, OStage>;
  static_assert(!(kPersistent && kGeneral), "the general instance runs the grid");
  static_assert(kGeneral || !kPagedCall, "a paged cache is read by the general instance");
  // split-KV: the combine kernel, launched as this one's dependent, may take its place on
  // the SMs as soon as every CTA is here (launch.cuh); it waits for this grid's end to read
  if constexpr (kGeneral) allow_dependent_launch();
  // A padded batch's K and V are loaded by TMA (tma.cuh; the host encodes `maps`); the
  // general instance (a packed batch, a paged cache, split-KV) and any call whose K / V
  // the engine cannot address load them with cp.async (KvStream), `maps` unused.
  constexpr bool kTma = !kGeneral;
  constexpr int BM = Tiles::BM;
  using Cta = ForwardCta<T, kGeneral>;
  using Stream = typename Tiles::template Stream<V, T, kGeneral, kDropout, kPagedCall>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_address(smem_raw) & 1023)) & 1023);
  T* sQ0 = reinterpret_cast<T*>(smem);                   // [kQSlots][kConsumers]
  T* sK = reinterpret_cast<T*>(smem + Tiles::kQBytes);  // [Stages]
  T* sV = reinterpret_cast<T*>(smem + Tiles::kQBytes + Stages * Tiles::K::kBytes);  // [Stages]
  // [kConsumers], Tiles::kOStage
  unsigned char* sO = smem + Tiles::kQBytes + Stages * (Tiles::K::kBytes + Tiles::V::kBytes);
  // kSplitKv: a stage's K and V have a barrier pair each. V is read one step later than K
  // (a tile's P V is issued in the next tile's turn), so K is handed back as soon as both
  // consumers' Q K^T have read it, and the producer refills it a step earlier than one
  // pair per stage lets it. With two stages (d = 256, and the persistent kernel at d =
  // 128, whose output stages take the third) that step keeps the loads ahead: forward
  // 465 -> 707 TFLOP/s dense (N = 8192). With three (the grid at d = 128) one pair per
  // stage (K and V loaded and released together) measured 2-4 % faster: the extra waits
  // and arrivals per tile cost more than the slack gained (PERF.md, issue 8's ninth step).
  constexpr bool kSplitKv = Stages == 2;
  uint64_t* full_k = reinterpret_cast<uint64_t*>(smem + Tiles::kBarrierOffset);  // [Stages]
  uint64_t* empty_k = full_k + Stages;                                           // [Stages]
  uint64_t* full_v = kSplitKv ? empty_k + Stages : full_k;                       // [Stages]
  uint64_t* empty_v = kSplitKv ? full_v + Stages : empty_k;                      // [Stages]
  // persistent, per Q slot and consumer (index slot * kConsumers + consumer): full when
  // the producer has written the consumer's unit and its Q rows have landed, empty when
  // the consumer's last Q K^T of that unit is done (each consumer's rows apart, so that
  // the first to finish a unit gets its next rows first)
  constexpr int kQBuffers = Tiles::kQSlots * Tiles::kConsumers;
  uint64_t* q_full = full_k + 4 * Stages;                          // [kQBuffers]
  uint64_t* q_empty = q_full + kQBuffers;                          // [kQBuffers]
  // the card writer's: full when it has written the next unit's card, empty when the
  // loading thread has taken it
  uint64_t* card_full = q_empty + kQBuffers;
  uint64_t* card_empty = card_full + 1;
  UnitCard* q_card = reinterpret_cast<UnitCard*>(card_empty + 1);  // [kQBuffers]
  UnitCard* next_card = q_card + kQBuffers;
  static_assert(sizeof(UnitCard) == Tiles::kCardBytes && alignof(UnitCard) <= 8, "the card");
  constexpr int kQ = Tiles::Q::kBytes / int(sizeof(T));
  constexpr int kK = Tiles::K::kBytes / int(sizeof(T)), kV = Tiles::V::kBytes / int(sizeof(T));
  constexpr int kKvRowBytes = (D + Dv) * int(sizeof(T));  // a key's K and V (unit_at)

  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < Stages; ++s) {
      mbarrier_init(&full_k[s], kTma ? 1 : 128);           // the producer's threads
      mbarrier_init(&empty_k[s], 128 * Tiles::kConsumers);  // the consumers' threads
      if (kSplitKv) {
        mbarrier_init(&full_v[s], kTma ? 1 : 128);
        mbarrier_init(&empty_v[s], 128 * Tiles::kConsumers);
      }
    }
    if constexpr (kPersistent) {
#pragma unroll
      for (int s = 0; s < kQBuffers; ++s) {
        mbarrier_init(&q_full[s], 1);
        mbarrier_init(&q_empty[s], 128);
      }
      mbarrier_init(card_full, 1);
      mbarrier_init(card_empty, 1);
    }
    mbarrier_init_fence();
  }
  __syncthreads();  // the barriers are initialised; the CTA never meets again
  // (through a shuffle from lane 0, so that the compiler knows it is the same in every
  // lane of a warp and keeps what derives from it, a consumer's Q address and the wgmma
  // descriptors made from it, in uniform registers: CUTLASS's warp-group index does the
  // same)
  const int warpgroup = __shfl_sync(0xffffffffu, int(threadIdx.x / 128), 0);
  int i = 0;  // K/V tiles so far, over all units: tile i is in stage i % Stages
  // The grid CTA's row of K/V tiles, taken before the producer gives registers away: its
  // cut to the mask's key range (trim_row) is 64-bit interval arithmetic, which spilled
  // in the producer's 24 / 32 registers. (A persistent CTA takes each unit's row as it
  // draws the unit.)
  TileRow grid_row{};
  if constexpr (!kPersistent) {
    const Cta grid_cta(a, BM);
    grid_row = grid_cta.template tiles<V, BM, BN>(a, p, grid_cta.shape(a));
  }

  // The producer is warpgroup 0 because the loads (load_tile_swizzled) index their
  // threads by threadIdx.x, 0..127.
  // With one consumer (decoding) the CTA's 256 threads may each hold up to 255 registers,
  // so nothing is moved between the warpgroups.
  constexpr bool kMoveRegisters = Tiles::kConsumers > 1;
  if (warpgroup == 0) {
    if constexpr (kMoveRegisters) release_registers<Tiles::template kProducerRegisters<kTma>>();
    if constexpr (kPersistent) {
      // The card writer, warp 1's first lane: draws the units (unit_at's comment) and
      // works out each one's card, a card ahead of the loading thread, which takes it
      // during the unit before with two Q slots. In its own registers: worked out in the
      // loading thread's loop, the card's arithmetic had doubled that thread's spills.
      if (threadIdx.x == 32) {
        const int units = (a.shape.q_len + BM - 1) / BM * (a.shape.batch * a.shape.heads);
        for (int k = 0;; ++k) {
          mbarrier_wait<true>(card_empty, (k & 1) ^ 1);
          const int u = k == 0 ? int(blockIdx.x) : int(gridDim.x) + atomicAdd(a.tickets, 1);
          *next_card = unit_card<kKvRowBytes, V, BM, BN>(a, p, u, units);
          mbarrier_arrive(card_full);
          if (u >= units) return;
        }
      }
    }
    if (kTma && threadIdx.x != 0) return;  // one thread issues every TMA load
    // the K/V tiles of one unit, each into its stage once every consumer is done with
    // what that stage held; after_first() after the first tile's (or at once: no tile)
    auto load_unit = [&](const Cta& cta, const TileRow& row, auto&& after_first) {
      const Shape& n = cta.shape(a);
      if (kGeneral && cta.q0 >= n.q_len) return;  // varlen: past a shorter sequence's rows
      const Stream kv{sK, sV, p, n, a.sparse, cta.k, cta.v, cta.b, cta.h, cta.hk, cta.q0, row};
      // the K (kLoadK, kLoadV = true, false), the V (false, true) or both of walk entry
      // `entry`, tile `tile` of the CTA
      auto load = [&](auto k_part, auto v_part, int tile, int entry) {
        constexpr bool kLoadK = decltype(k_part)::value, kLoadV = decltype(v_part)::value;
        const int stage = tile % Stages, round = tile / Stages;
        const int k0 = TileRow::tile_of(entry) * BN;
        uint64_t* const full = (kLoadK ? full_k : full_v) + stage;
        mbarrier_wait<true>((kLoadK ? empty_k : empty_v) + stage, (round & 1) ^ 1);
        if constexpr (kTma) {
          mbarrier_arrive_expecting(
              full, (kLoadK ? Tiles::K::kBytes : 0) + (kLoadV ? Tiles::V::kBytes : 0));
          if constexpr (kLoadK)
            tma_load_tile<BN, D>(sK + stage * kK, maps.k, k0, cta.hk, cta.b, full);
          if constexpr (kLoadV)
            tma_load_tile<BN, Dv>(sV + stage * kV, maps.v, k0, cta.hk, cta.b, full);
        } else {
          if constexpr (kLoadK) kv.template load_rows<D>(kv.k, sK + stage * kK, entry);
          if constexpr (kLoadV) kv.template load_rows<Dv>(kv.v, sV + stage * kV, entry);
          mbarrier_arrive_on_copies(full);
        }
      };
      // split: tile i's K goes out before tile i - 1's V, in the order the consumers read them
      int previous = -1;  // the walk entry of tile i - 1 of this unit
      auto walk = kv.walk();
      if (walk.done()) after_first();
      for (bool first = true; !walk.done(); ++i, walk.advance(), first = false) {
        if constexpr (kSplitKv) {
          load(std::true_type{}, std::false_type{}, i, walk.entry);
          if (previous >= 0) load(std::false_type{}, std::true_type{}, i - 1, previous);
          previous = walk.entry;
        } else {
          load(std::true_type{}, std::true_type{}, i, walk.entry);
        }
        if (first) after_first();
      }
      if (kSplitKv && previous >= 0) load(std::false_type{}, std::true_type{}, i - 1, previous);
    };
    if constexpr (kPersistent) {
      // Each consumer's Q rows of a unit (one box of 64 rows per 64 columns) go into a Q
      // slot as soon as that consumer is done with what the slot held. With two slots the
      // next unit's rows go out during this one, after its first K/V tile, and land a
      // unit ahead; with one, this unit's rows go out after its first K/V tile, once the
      // unit before has done its last Q K^T. (Two slots loaded like one left consumers
      // waiting ~1.3 us for Q at each unit: PERF.md, issue 8's twenty-first step.) A
      // unit's first tile goes first because its stage is free while the unit before
      // still runs.
      constexpr bool kQAhead = Tiles::kQSlots == 2;
      // the Q rows of this CTA's k-th unit and its card, copied from *card (an arrival
      // publishes both; a card of unit -1: no more). From shared memory to shared
      // memory: a card held in the loop's registers raised the thread's spills.
      auto load_q = [&](const UnitCard* card, int k) {
        const int slot = k % Tiles::kQSlots, use = k / Tiles::kQSlots;
#pragma unroll
        for (int c = 0; c < Tiles::kConsumers; ++c) {
          const int buffer = slot * Tiles::kConsumers + c;
          mbarrier_wait<true>(&q_empty[buffer], (use & 1) ^ 1);
          q_card[buffer] = *card;
          if (card->unit < 0) {
            mbarrier_arrive(&q_full[buffer]);
            continue;
          }
          mbarrier_arrive_expecting(&q_full[buffer], Tiles::Q::kBytes);
          tma_load_tile<64, D>(sQ0 + buffer * kQ, maps.q, card->m_block * BM + 64 * c, card->h,
                               card->b, &q_full[buffer]);
        }
      };
      // the k-th card from the card writer: written (its copy taken: card_empty)
      auto wait_card = [&](int k) { mbarrier_wait<true>(card_full, k & 1); };
      if (kQAhead) {
        wait_card(0);
        load_q(next_card, 0);
        mbarrier_arrive(card_empty);
      }
      for (int k = 0;; ++k) {
        // this unit's card: with two slots taken during the unit before, in its slot
        if (!kQAhead) wait_card(k);
        const UnitCard card =
            kQAhead ? q_card[(k % Tiles::kQSlots) * Tiles::kConsumers] : *next_card;
        if (card.unit < 0) {
          if (!kQAhead) {  // (ahead: published with the unit before)
            load_q(next_card, k);
            mbarrier_arrive(card_empty);
          }
          break;
        }
        load_unit(Cta(a, BM, card.m_block, card.b, card.h, card.hk), card.row, [&] {
          if (kQAhead) wait_card(k + 1);
          load_q(next_card, kQAhead ? k + 1 : k);
          mbarrier_arrive(card_empty);
        });
      }
    } else {
      load_unit(Cta(a, BM), grid_row, [] {});
    }
    if constexpr (!kTma) {
      cp_async_commit();
      cp_async_wait<0>();  // no copy outlives the thread that issued it
    }
    return;
  }

  if constexpr (kMoveRegisters) set_registers<Tiles::template kConsumerRegisters<kTma>>();
  const int consumer = warpgroup - 1;
  const int warp = (threadIdx.x >> 5) - 4;  // among the consumers' warps
  // Turns: a consumer's GEMMs of one step (Q K^T of this tile, P V of the previous
  // one) are issued in its turn, so that the consumers' GEMMs take turns in a ring
  // (0, 1, [2,] 0, ...) and each one's softmax runs under the others' GEMMs. Consumer
  // 0 goes first; each hands the turn to the next once its GEMMs are issued. In the
  // grid's CTA the last consumer's last hand-over is left out, so that every arrival is
  // waited for; a persistent CTA's ring runs on from unit to unit (a consumer starts
  // its next unit without waiting for the others to end this one), and consumer 0
  // takes the last hand-over after the last unit.
  // One consumer (decoding) has no one to take turns with.
  constexpr bool kTurns = Tiles::kConsumers > 1;
  constexpr int kLast = Tiles::kConsumers - 1;
  const int next = consumer == kLast ? 0 : consumer + 1;
  float o[1][Dv / 8][4];
  OnlineSoftmax<BN / 8> softmax[1];
  uint32_t pa[BN / 16][4];                     // P of the previous tile, the A of its P V
  uint32_t pa_lost[kExactP ? BN / 16 : 1][4];  // kExactP: what rounding P lost
  int pending = 0;                             // the stage whose V the pending P V reads
  int q_slot = 0;                              // persistent: the unit's Q slot
  // waits for the V of the pending P V, tile i - 1 (loaded after tile i's K; waited for
  // outside the turn, so as not to hold the other consumer)
  auto wait_pending_v = [&] {
    mbarrier_wait(&full_v[pending], ((i - 1) / Stages) & 1);
    if constexpr (!kTma) fence_proxy_async();
  };
  auto issue_pv = [&](int stage) {
    const uint32_t v_tile = smem_address(sV + stage * kV);
    issue_gemm_rs<T, Dv, BN>(o[0], pa, v_tile, Tiles::V::kBlockBytes);
    if constexpr (kExactP)  // forward.cuh: P V plus the MMA of what rounding P lost
      issue_gemm_rs<T, Dv, BN>(o[0], pa_lost, v_tile, Tiles::V::kBlockBytes);
  };
  // One K/V tile of a unit (`walk`, its rows from row0, its Q rows at q_rows). kOverlap:
  // Q K^T is issued before the previous tile's P V, so that it is done while that P V
  // may still run: this tile's softmax overlaps this warpgroup's own P V (and the other
  // consumer's GEMMs), and O is rescaled once the P V is waited for. Only with TMA loads
  // (240 registers): with the cp.async producer the consumers have 224, the overlap
  // measured no faster and its extra live registers spilled in document's consumers
  // (PERF.md, issue 8's seventh step); there P V goes first and both are waited for
  // together. Each kind (kFirstTile ...) is a separate instance, not a runtime test:
  // ptxas tracks which wgmma groups are in flight along each path, and across a runtime
  // branch it assumed the worst and serialised them.
  // With three consumers (160 registers) the overlap's live P of the previous tile and
  // the exact-P residual together spilled 304 bytes (ALiBi, d = 64): that instance,
  // which only parameter gradients call, waits for both GEMMs together, and ptxas
  // serialises its wgmmas there (C7511, tests/cpu/test_generated.py).
  // kCarriedTile: the unit before's last P V goes first, then this Q K^T; once the P V
  // is done, store_carried stores that unit's O while the Q K^T runs.
  constexpr bool kOverlap = kTma && !(kExactP && Tiles::kConsumers == 3);
  auto step = [&](auto kind, auto& walk, const Shape& n, int b, int h, int row0,
                  uint32_t q_rows, auto&& store_carried) {
    constexpr int kKind = decltype(kind)::value;
    constexpr bool kCarry = kKind == kCarriedTile;
    constexpr bool kPv = kKind == kNextTile;  // this unit's previous P V is pending
    const int stage = i % Stages, round = i / Stages;
    const int k0 = TileRow::tile_of(walk.entry) * BN;
    const TileMask tile = walk.mask;
    walk.advance();
    mbarrier_wait(&full_k[stage], round & 1);
    // the producer's cp.async writes, for this thread's wgmmas (TMA writes are made by
    // the async proxy that wgmma reads through)
    if constexpr (!kTma) fence_proxy_async();
    if constexpr (kSplitKv && (kPv || kCarry)) wait_pending_v();

    float s[1][BN / 8][4];
    float row_offset[1][2];  // V::kAffineBias (forward.cuh score_and_mask)
    if constexpr (kTurns) bar_sync(kTurnBarrier + consumer, 256);
    if constexpr (kCarry || (!kOverlap && kPv)) issue_pv(pending);
    issue_gemm_ss<T, BN, D>(s[0], q_rows, Tiles::Q::kBlockBytes, smem_address(sK + stage * kK),
                            Tiles::K::kBlockBytes);
    if constexpr (kOverlap && kPv) issue_pv(pending);
    if (kTurns && (kPersistent || consumer != kLast || !walk.done()))
      bar_arrive(kTurnBarrier + next, 256);
    if constexpr (kCarry) {
      wgmma_wait<1>();  // the carried P V, issued first; the Q K^T may still run
      fence_operand(o[0]);
      mbarrier_arrive(&empty_v[pending]);
      store_carried();
    }
    wgmma_wait<!kOverlap || !kPv ? 0 : kExactP ? 2 : 1>();  // Q K^T done
    fence_operand(s[0]);
    if (kPersistent && walk.done())  // this unit's last Q K^T
      mbarrier_arrive(&q_empty[q_slot * Tiles::kConsumers + consumer]);
    if constexpr (kSplitKv) mbarrier_arrive(&empty_k[stage]);  // its K has been read
    if constexpr (!kOverlap && kPv) {  // and the previous P V
      fence_operand(o[0]);
      mbarrier_arrive(&empty_v[pending]);
    }
    if (tile.partial()) {
      score_and_mask<true, V>(s, row_offset, p, n, a.sparse, tile, b, h, row0, k0);
    } else {
      score_and_mask<false, V>(s, row_offset, p, n, a.sparse, tile, b, h, row0, k0);
    }
    float alpha[1][2];
    softmax_probabilities<kDropout, V>(s, row_offset, softmax, alpha, n, a.dropout,
                                       b * a.shape.heads + h, row0, k0);
    if constexpr (kOverlap && kPv) {  // the previous P V: its V has been read
      wgmma_wait<0>();
      fence_operand(o[0]);
      mbarrier_arrive(&empty_v[pending]);
    }
    if constexpr (kPv) rescale_output(o, alpha);
    accumulator_to_a<T>(pa, s[0]);
    if constexpr (kExactP) {
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[0][nt][e] = rounding_residual<T>(s[0][nt][e]);
      }
      accumulator_to_a<T>(pa_lost, s[0]);
    }
    pending = stage;
    ++i;
  };
  using First = std::integral_constant<int, kFirstTile>;
  using Next = std::integral_constant<int, kNextTile>;
  using Carried = std::integral_constant<int, kCarriedTile>;
  // the last tile's P V, outside a turn (no Q K^T follows it)
  auto last_pv = [&] {
    if constexpr (kSplitKv) wait_pending_v();
    issue_pv(pending);
    wgmma_wait<0>();
    fence_operand(o[0]);
    mbarrier_arrive(&empty_v[pending]);
  };

  if constexpr (!kPersistent) {
    const Cta cta(a, BM);
    const Shape& n = cta.shape(a);
    const int b = cta.b, h = cta.h, q0 = cta.q0;
    if (kGeneral && q0 >= n.q_len) return;  // varlen: past a shorter sequence's rows
    T* sQ = sQ0 + consumer * kQ;
    const Stream kv{sK, sV, p, n, a.sparse, cta.k, cta.v, b, h, cta.hk, q0, grid_row};
    // This consumer's 64 query rows, by cp.async from its 128 threads
    // (load_tile_swizzled for threads that are not threads 0..127 of the CTA)
    {
      const int rows = q0 + 64 * consumer;
      const int tid = threadIdx.x & 127;
      unsigned char* dst = reinterpret_cast<unsigned char*>(sQ);
      constexpr int kChunks = D / 8, kRowsPerPass = 128 / kChunks;
      const int r0 = tid / kChunks, c = tid % kChunks;
#pragma unroll
      for (int r = r0; r < 64; r += kRowsPerPass) {
        const bool valid = rows + r < n.q_len;
        cp_async_16(dst + Tiles::Q::chunk_offset(r, 8 * c),
                    valid ? cta.q.at(b, h, rows + r) + 8 * c : a.q.data, valid);
      }
      cp_async_commit();
      cp_async_wait<0>();
      fence_proxy_async();  // the rows were written by the generic proxy; wgmma reads async
      bar_sync(kQBarrier + consumer, 128);
    }
    zero(o);
    const int row0 = q0 + 16 * warp;  // this warp's first query row
    const uint32_t q_rows = smem_address(sQ);
    auto walk = kv.walk();
    if (kTurns && consumer == kLast && !walk.done()) bar_arrive(kTurnBarrier + 0, 256);
    auto none = [] {};
    if (!walk.done()) {
      step(First{}, walk, n, b, h, row0, q_rows, none);
      while (!walk.done()) step(Next{}, walk, n, b, h, row0, q_rows, none);
      last_pv();
    }
    // through Q's buffer, free after the last Q K^T
    store_output_staged<kDropout, kGeneral, Tiles::Q::kBytes>(
        o, softmax, a, n, b, h, row0, q0 + 64 * consumer, reinterpret_cast<unsigned char*>(sQ),
        kQBarrier + consumer);
  } else {
    // Persistent: each unit's Q rows come from the producer in q_slot; a unit's last P V
    // is carried into the next unit's first step, whose Q K^T runs while this consumer
    // stores the unit's O (from the fragments: the Q buffers hold the next units' rows).
    const Shape& n = a.shape;
    zero(o);
    if (kTurns && consumer == kLast) bar_arrive(kTurnBarrier + 0, 256);
    int carried = -1;  // the unit whose O waits for its last P V, or -1 (one register:
                       // its batch, head and rows held apart spilled at d = 64's 160, and
                       // with the output stage at d = 128 in document and T5's consumers)
    auto store_carried = [&] {
      const Cta done = unit_cta<kKvRowBytes, T>(a, BM, carried);
      if (Tiles::kOStage && a.out_f32 == nullptr) {  // (a training call's fp32 O: below)
        store_output_tma<kDropout>(o, softmax, a, n, done.b, done.h, done.q0 + 64 * consumer,
                                   sO + consumer * Tiles::O::kBytes, kQBarrier + consumer,
                                   maps.o);
      } else {
        store_output<kDropout, false>(o, softmax, a, n, done.b, done.h, done.q0 + 16 * warp);
      }
      zero(o);
      softmax[0] = OnlineSoftmax<BN / 8>{};
    };
    for (int use = 0;;) {
      const int buffer = q_slot * Tiles::kConsumers + consumer;
      mbarrier_wait(&q_full[buffer], use & 1);
      // read through a shuffle from lane 0, so that the compiler knows it is the same in
      // every lane: a load from shared memory is not, and everything derived from it (the
      // unit's tiles, the loop's trip count, the K/V stage) then went to per-thread
      // registers, every wgmma descriptor computed there and moved to uniform ones (208
      // R2UR against the grid kernel's 40; forward 4-10 % slower, PERF.md twentieth step)
      const UnitCard& card = q_card[buffer];
      const int u = __shfl_sync(0xffffffffu, card.unit, 0);
      if (u < 0) break;
      const Cta cta(a, BM, __shfl_sync(0xffffffffu, card.m_block, 0),
                    __shfl_sync(0xffffffffu, card.b, 0), __shfl_sync(0xffffffffu, card.h, 0),
                    __shfl_sync(0xffffffffu, card.hk, 0));
      const TileRow row{
          reinterpret_cast<const int*>(__shfl_sync(
              0xffffffffu, reinterpret_cast<unsigned long long>(card.row.list), 0)),
          __shfl_sync(0xffffffffu, card.row.begin, 0), __shfl_sync(0xffffffffu, card.row.end, 0)};
      const Stream kv{sK, sV, p, n, a.sparse, cta.k, cta.v, cta.b, cta.h, cta.hk, cta.q0, row};
      const int row0 = cta.q0 + 16 * warp;
      const uint32_t q_rows = smem_address(sQ0 + buffer * kQ);
      auto walk = kv.walk();
      if (walk.done()) {  // no tile: its rows' O is 0 and their lse -inf
        mbarrier_arrive(&q_empty[buffer]);
        if (carried >= 0) {
          last_pv();
          store_carried();
        }
        carried = u;
        store_carried();
        carried = -1;
      } else {
        if (carried >= 0) {
          step(Carried{}, walk, n, cta.b, cta.h, row0, q_rows, store_carried);
        } else {
          step(First{}, walk, n, cta.b, cta.h, row0, q_rows, store_carried);
        }
        while (!walk.done()) step(Next{}, walk, n, cta.b, cta.h, row0, q_rows, store_carried);
        carried = u;
      }
      if (++q_slot == Tiles::kQSlots) {
        q_slot = 0;
        ++use;
      }
    }
    if (carried >= 0) {
      last_pv();
      store_carried();
    }
    // the output stage is not left before its last store has read it
    if (Tiles::kOStage && (threadIdx.x & 127) == 0) bulk_wait_read<0>();
    if (kTurns && consumer == 0) bar_sync(kTurnBarrier + 0, 256);  // the last consumer's last hand-over
  }
}

}  // namespace fg
