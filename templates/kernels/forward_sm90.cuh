// The forward pass on Hopper (sm_90a): the FlashAttention-2 algorithm of forward.cuh with
// its two GEMMs on warpgroup MMA (wgmma.cuh) instead of mma.sync.
//
// One CTA per (BM query rows, batch * head), BM / 64 warpgroups of 128 threads; each
// warpgroup owns 64 query rows. S = Q K^T is one chain of wgmmas with both operands in
// shared memory (no ldmatrix: the tensor cores read the swizzled tiles themselves), and
// O += P V takes P straight from the registers the softmax left it in. The score, mask,
// online softmax, dropout and epilogue are the mma.sync family's own functions: a
// wgmma accumulator is, per warp, the m16n8 fragment layout they were written for, so
// every variant the spec language can express runs here unchanged.
//
// K/V tiles stream through two shared-memory stages with cp.async (schedule.cuh KvStream,
// SwizzledRows), as in forward.cuh. What this first Hopper kernel does not do yet
// (templates/kernels/PERF.md): TMA loads, warp specialisation with a producer warpgroup,
// and overlapping one tile's softmax with the next tile's GEMMs.
#pragma once
#include "forward.cuh"
#include "wgmma.cuh"

namespace fg {

template <int D, int Dv, int BM, int BN>
struct ForwardTilesSm90 {
  static constexpr int kWarpgroups = BM / 64;
  static constexpr int kThreads = 128 * kWarpgroups;
  using Q = SwizzledTile<BM, D>;
  using K = SwizzledTile<BN, D>;
  using V = SwizzledTile<BN, Dv>;
  template <class Variant, class T, bool kGeneral>
  using Stream = KvStream<Variant, T, D, Dv, BM, BN, kThreads, kGeneral, SwizzledRows>;
  // Q, then two K/V stages; +1024 to align the start on a swizzle pattern (1024 bytes)
  static constexpr int kSmemBytes = Q::kBytes + 2 * (K::kBytes + V::kBytes) + 1024;
  template <class T>
  static constexpr int smem_bytes() { return kSmemBytes; }
  // CTAs per SM that shared memory allows (228 KiB per SM, 1 KiB of it reserved per CTA),
  // at most 3, for a CTA of one warpgroup: its warpgroup waits on its own GEMMs and runs
  // its softmax with the tensor cores idle unless other CTAs on the SM fill them, and two
  // warpgroups of one CTA, meeting at every tile's barrier, do not (PERF.md). Given to
  // __launch_bounds__, so that ptxas keeps the registers of that many CTAs (168 for 3).
  static constexpr int kFitPerSM = 228 * 1024 / (kSmemBytes + 1024);
  static constexpr int kMinBlocksPerSM = kWarpgroups > 1 ? 1 : (kFitPerSM < 3 ? kFitPerSM : 3);
  static_assert(BM % 64 == 0 && BN % 16 == 0 && BN <= 256, "m64 warpgroups, k16 steps of P V");
  static_assert(D % 64 == 0 && Dv % 64 == 0 && Dv <= 256, "whole 128-byte rows; wgmma's N <= 256");
};

// Template arguments as forward_kernel's (forward.cuh), without W: the warps are BM / 16.
template <class V, class T, int D, int Dv, int BM, int BN, bool kDropout, bool kExactP,
          bool kGeneral>
__global__ void __launch_bounds__(ForwardTilesSm90<D, Dv, BM, BN>::kThreads,
                                  ForwardTilesSm90<D, Dv, BM, BN>::kMinBlocksPerSM)
forward_kernel_sm90(const ForwardArgs<T> a, const typename V::Params p) {
  using Tiles = ForwardTilesSm90<D, Dv, BM, BN>;
  // split-KV: the combine kernel, launched as this one's dependent, may take its place on
  // the SMs as soon as every CTA is here (launch.cuh); it waits for this grid's end to read
  if constexpr (kGeneral) allow_dependent_launch();
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_address(smem_raw) & 1023)) & 1023);
  T* sQ = reinterpret_cast<T*>(smem);

  const ForwardCta<T, kGeneral> cta(a, BM);
  const Shape& n = cta.shape(a);
  const int b = cta.b, h = cta.h, q0 = cta.q0;
  if (kGeneral && q0 >= n.q_len) return;  // varlen: past a shorter sequence's rows
  const int warp = threadIdx.x >> 5, warpgroup = warp / 4;
  T* sK = reinterpret_cast<T*>(smem + Tiles::Q::kBytes);  // [2] K tiles
  T* sV = reinterpret_cast<T*>(smem + Tiles::Q::kBytes + 2 * Tiles::K::kBytes);
  const typename Tiles::template Stream<V, T, kGeneral> kv{
      sK, sV, p, n, a.sparse, cta.k, cta.v, b, h, cta.hk, q0, cta.template tiles<V, BM, BN>(a, p, n)};

  SwizzledRows::load<BM, D, Tiles::kThreads>(sQ, cta.q.at(b, h, q0), a.q.row, n.q_len - q0,
                                             a.q.data);

  float o[1][Dv / 8][4];
  zero(o);
  OnlineSoftmax<BN / 8> softmax[1];
  const int row0 = q0 + 16 * warp;  // this warp's first query row
  // this warpgroup's 64 rows of Q: rows are 128 bytes apart inside each 64-column block
  const uint32_t q_rows = smem_address(sQ) + warpgroup * 64 * 128;
  kv.for_each([&](int k0, TileMask tile, const T* sK_tile, const T* sV_tile) {
    float s[1][BN / 8][4];
    float row_offset[1][2];  // V::kAffineBias (forward.cuh score_and_mask)
    warpgroup_gemm_ss<T, BN, D>(s[0], q_rows, Tiles::Q::kBlockBytes, smem_address(sK_tile),
                                Tiles::K::kBlockBytes);
    if (tile.partial()) {
      score_and_mask<true, V>(s, row_offset, p, n, a.sparse, tile, b, h, row0, k0);
    } else {
      score_and_mask<false, V>(s, row_offset, p, n, a.sparse, tile, b, h, row0, k0);
    }
    softmax_tile<kDropout, V>(s, row_offset, o, softmax, n, a.dropout, b * a.shape.heads + h,
                              row0, k0);
    uint32_t pa[BN / 16][4];
    accumulator_to_a<T>(pa, s[0]);
    const uint32_t v_tile = smem_address(sV_tile);
    if constexpr (kExactP) {  // forward.cuh: P V plus the MMA of what rounding P lost
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) s[0][nt][i] = rounding_residual<T>(s[0][nt][i]);
      }
      uint32_t pa_lost[BN / 16][4];
      accumulator_to_a<T>(pa_lost, s[0]);
      warpgroup_gemm_rs<T, Dv, BN>(o[0], pa, v_tile, Tiles::V::kBlockBytes);
      warpgroup_gemm_rs<T, Dv, BN>(o[0], pa_lost, v_tile, Tiles::V::kBlockBytes);
    } else {
      warpgroup_gemm_rs<T, Dv, BN>(o[0], pa, v_tile, Tiles::V::kBlockBytes);
    }
  });

  store_output<kDropout, kGeneral>(o, softmax, a, n, b, h, row0);
}

}  // namespace fg
