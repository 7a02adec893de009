// Attention dropout, drawn in the kernel and drawn again, identically, in the backward
// pass: no mask is ever stored.
//
// The draws are Philox4x32-10 (Salmon et al., SC'11) on a counter that names the
// element, in the layout flashgen/reference/philox.py defines (and the reference
// draws with, bit for bit):
//   key     = (seed lo, seed hi)
//   counter = (kv >> 1, ((q >> 4) << 3) | (q & 7), b * Hq + h, offset)
//   word    = ((q >> 3) & 1) * 2 + (kv & 1);   keep iff draw[word] >= threshold
// q and kv are the spec's indices: a shard of a longer sequence (common/frame.cuh) draws
// its elements' global draws, which is why shards start at multiples of 16 rows.
// One call covers the 2 x 2 elements (rows q, q + 8; columns kv, kv + 1) that a thread
// holds in an m16n8 accumulator fragment, so a kernel calls it once per fragment,
// whatever its tile sizes.
#pragma once
#include <cstdint>

namespace fg {

struct Dropout {
  uint32_t seed_lo, seed_hi;  // the Philox key
  uint32_t offset;            // counter word 3: a fresh stream per call
  uint32_t threshold;         // min(floor(p * 2^32), 2^32 - 1): drop a draw below it
  float keep_scale;           // 1 / (1 - p)
  int q_first, kv_first;      // the call's first rows in the spec's sequences (Frame)
  // p > 0 (a p below 2^-32 drops nothing but still scales, as the reference does)
  bool active() const { return threshold != 0 || keep_scale != 1.0f; }
  template <class Reader>
  static Dropout read(Reader& in) {
    Dropout d;
    d.seed_lo = static_cast<uint32_t>(in.i64());
    d.seed_hi = static_cast<uint32_t>(in.i64());
    d.offset = static_cast<uint32_t>(in.i64());
    d.threshold = static_cast<uint32_t>(in.i64());
    d.q_first = in.i32();
    d.kv_first = in.i32();
    d.keep_scale = in.f32();
    return d;
  }
};

// The four draws of the fragment whose top-left element is (q, kv): q % 16 < 8, kv even.
__device__ __forceinline__ uint4 dropout_draws(const Dropout& d, int bh, int q, int kv) {
  q += d.q_first;
  kv += d.kv_first;
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // key schedule
  uint32_t c0 = uint32_t(kv) >> 1, c1 = ((uint32_t(q) >> 4) << 3) | (uint32_t(q) & 7u);
  uint32_t c2 = uint32_t(bh), c3 = d.offset;
  uint32_t k0 = d.seed_lo, k1 = d.seed_hi;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kM0, c0), lo0 = kM0 * c0;
    const uint32_t hi1 = __umulhi(kM1, c2), lo1 = kM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return make_uint4(c0, c1, c2, c3);
}

// The factor of each of a fragment's four elements: 1 / (1 - p) where kept, 0 where dropped.
__device__ __forceinline__ void dropout_factors(const Dropout& d, int bh, int q, int kv,
                                                float (&factor)[4]) {
  const uint4 r = dropout_draws(d, bh, q, kv);
  factor[0] = r.x >= d.threshold ? d.keep_scale : 0.0f;
  factor[1] = r.y >= d.threshold ? d.keep_scale : 0.0f;
  factor[2] = r.z >= d.threshold ? d.keep_scale : 0.0f;
  factor[3] = r.w >= d.threshold ? d.keep_scale : 0.0f;
}

// The factors of a warp's transposed block (the sm90 backward holds S^T: keys x query
// rows): 16 keys from kv0 (the warp's) by 16 query rows from q0, two n8 fragments of
// which lane (r, t) = (lane / 4, lane % 4) holds keys kv0 + r, kv0 + r + 8 and rows
// q0 + 8 c + 2 t, + 1 (c: the fragment): factor[c][i] for key kv0 + r + 8 (i >> 1), row
// q0 + 8 c + 2 t + (i & 1). In this layout a lane's four elements of a fragment lie in
// four different draws, so instead each lane draws two of the 64 that cover the block,
// (row q0 + x, key pair m) and (q0 + x, m + 4) with x = lane % 8, m = lane / 8, packs their
// eight keep bits, and the lanes exchange them: two shuffles, and one draw per lane and
// fragment, as in the query-major layout. q0 and kv0 are multiples of 16 (so are the
// frame's offsets), so a word's index bits are those of the block-relative indices.
__device__ __forceinline__ void dropout_factors_transposed(const Dropout& d, int bh, int q0, int kv0,
                                                           float (&factor)[2][4]) {
  const int lane = threadIdx.x & 31;
  uint32_t bits = 0;  // bit 4 u + w: word w of this lane's draw u
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const uint4 r = dropout_draws(d, bh, q0 + (lane & 7), kv0 + 2 * ((lane >> 3) + 4 * u));
    bits |= uint32_t(r.x >= d.threshold) << (4 * u) | uint32_t(r.y >= d.threshold) << (4 * u + 1) |
            uint32_t(r.z >= d.threshold) << (4 * u + 2) | uint32_t(r.w >= d.threshold) << (4 * u + 3);
  }
  const int r = lane >> 2, t = lane & 3;
  const int from = (r >> 1) * 8 + 2 * t;  // the lanes that drew rows 2t and 2t + 1 of r's key pair
  const uint32_t drawn[2] = {__shfl_sync(0xffffffffu, bits, from),
                             __shfl_sync(0xffffffffu, bits, from + 1)};
#pragma unroll
  for (int c = 0; c < 2; ++c)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // word ((row >> 3) & 1) * 2 + (key & 1) of draw u = i >> 1 of the lane for row parity i & 1
      const uint32_t keep = drawn[i & 1] >> (4 * (i >> 1) + 2 * c + (r & 1)) & 1u;
      factor[c][i] = keep ? d.keep_scale : 0.0f;
    }
}

}  // namespace fg
