// A tile pair's class, one rule for every place that asks: the kernels' classify_tile
// (kernels/mask.cuh, at their compile-time tile sizes), tile_class_kernel (the runtime
// tile lists of data-dependent masks, at any size) and the host's tile map
// (flashgen/plan/tile_map.py, what `flashgen explain` shows).
//
// Classes: 0 skip (no element visible), 1 full (every element visible), 2 partial.
#pragma once
#include "expr.cuh"
#include "interval.cuh"

namespace fg {

// The variant's mask over the tile [q0, q0 + block_m) x [k0, k0 + block_n), clipped to
// the sequences (the last tiles end at q_len and kv_len), by its interval analysis.
template <class V>
FG_HD int mask_tile_class(const typename V::Params& p, int b, int h, int q0, int k0, int block_m,
                          int block_n, int q_len, int kv_len) {
  if constexpr (V::kHasMask) {
    const int q_hi = (q0 + block_m < q_len ? q0 + block_m : q_len) - 1;
    const int kv_hi = (k0 + block_n < kv_len ? k0 + block_n : kv_len) - 1;
    return V::tile_class(p, b, h, q0, q_hi, k0, kv_hi, q_len, kv_len);
  }
  return 1;
}

// As a kernel runs it: also partial where the tile crosses the end of the keys (the
// bounds mask: its columns past kv_len must not count).
template <class V>
FG_HD int kernel_tile_class(const typename V::Params& p, int b, int h, int q0, int k0,
                            int block_m, int block_n, int q_len, int kv_len) {
  const int c = mask_tile_class<V>(p, b, h, q0, k0, block_m, block_n, q_len, kv_len);
  return c == 1 && k0 + block_n > kv_len ? 2 : c;
}

// The mask at one element; true where the spec has none
template <class V>
FG_HD bool mask_or_true(const typename V::Params& p, int b, int h, int q, int kv, int q_len,
                        int kv_len) {
  if constexpr (V::kHasMask) {
    return V::mask(p, b, h, q, kv, q_len, kv_len);
  }
  return true;
}

// The keys the mask may show to the queries [q_lo, q_hi] (the variant's kv_range: its
// comparisons solved for kv_idx, flashgen/analysis/bounds.py), and the queries that may see
// the keys [kv_lo, kv_hi] (q_range); every int32 where the mask bounds nothing. Not clipped
// to the sequence.
template <class V>
FG_HD Iv mask_kv_range(const typename V::Params& p, int b, int h, int q_lo, int q_hi, int q_len,
                       int kv_len) {
  if constexpr (V::kHasMask && V::kKvRange) {
    return V::kv_range(p, b, h, q_lo, q_hi, q_len, kv_len);
  }
  return iv_any();
}
template <class V>
FG_HD Iv mask_q_range(const typename V::Params& p, int b, int h, int kv_lo, int kv_hi, int q_len,
                      int kv_len) {
  if constexpr (V::kHasMask && V::kQRange) {
    return V::q_range(p, b, h, kv_lo, kv_hi, q_len, kv_len);
  }
  return iv_any();
}

}  // namespace fg
