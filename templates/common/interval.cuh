// Interval arithmetic for tile classification (flashgen/render/tile_class.py).
//
// A variant's tile_class() evaluates its mask over whole index ranges: an int
// expression becomes the interval [lo, hi] of every value it takes on the tile, a
// bool one the pair (may be true, may be false). Bounds are computed in 64 bits; when
// an int32 result could leave the int32 range the language's wrap-around would break
// monotonicity, so the interval becomes "anything". Floats are not tracked: a
// comparison of floats may be either. Every rule over-approximates, so kSkip and
// kFull are only ever claimed when they hold for every element.
#pragma once
#include <cstdint>

#include "expr.cuh"

namespace fg {

struct Iv {  // every int32 value in [lo, hi]
  int64_t lo, hi;
};
struct Tri {  // what a bool may be
  bool may_true, may_false;
};

FG_HD Iv iv(int64_t x) { return {x, x}; }
FG_HD Iv iv(int64_t lo, int64_t hi) {
  return (lo < INT32_MIN || hi > INT32_MAX) ? Iv{INT32_MIN, INT32_MAX} : Iv{lo, hi};
}
FG_HD Iv iv_any() { return {INT32_MIN, INT32_MAX}; }
FG_HD bool exact(Iv a) { return a.lo == a.hi; }
FG_HD int64_t lo4(int64_t a, int64_t b, int64_t c, int64_t d) {
  return (a < b ? a : b) < (c < d ? c : d) ? (a < b ? a : b) : (c < d ? c : d);
}
FG_HD int64_t hi4(int64_t a, int64_t b, int64_t c, int64_t d) {
  return (a > b ? a : b) > (c > d ? c : d) ? (a > b ? a : b) : (c > d ? c : d);
}
FG_HD int64_t floordiv64(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
FG_HD int64_t mod64(int64_t a, int64_t b) {
  const int64_t r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}

FG_HD Iv iv_add(Iv a, Iv b) { return iv(a.lo + b.lo, a.hi + b.hi); }
FG_HD Iv iv_sub(Iv a, Iv b) { return iv(a.lo - b.hi, a.hi - b.lo); }
FG_HD Iv iv_neg(Iv a) { return iv(-a.hi, -a.lo); }
FG_HD Iv iv_mul(Iv a, Iv b) {
  const int64_t w = a.lo * b.lo, x = a.lo * b.hi, y = a.hi * b.lo, z = a.hi * b.hi;
  return iv(lo4(w, x, y, z), hi4(w, x, y, z));
}
// floor division: monotone in each argument while the divisor keeps its sign
FG_HD Iv iv_floordiv(Iv a, Iv b) {
  if (exact(b) && b.lo == 0) return iv(0);
  if (b.lo > 0 || b.hi < 0) {
    const int64_t w = floordiv64(a.lo, b.lo), x = floordiv64(a.lo, b.hi),
                  y = floordiv64(a.hi, b.lo), z = floordiv64(a.hi, b.hi);
    return iv(lo4(w, x, y, z), hi4(w, x, y, z));
  }
  return iv_any();
}
FG_HD Iv iv_mod(Iv a, Iv b) {
  if (exact(b)) {
    const int64_t c = b.lo;
    if (c == 0 || c == -1) return iv(0);
    if (floordiv64(a.lo, c) == floordiv64(a.hi, c)) {  // one period: mod is a shift
      const int64_t x = mod64(a.lo, c), y = mod64(a.hi, c);
      return iv(x < y ? x : y, x < y ? y : x);
    }
    return c > 0 ? iv(0, c - 1) : iv(c + 1, 0);
  }
  if (b.lo > 0) return iv(0, b.hi - 1);
  if (b.hi < 0) return iv(b.lo + 1, 0);
  return iv_any();
}
FG_HD Iv iv_min(Iv a, Iv b) { return {a.lo < b.lo ? a.lo : b.lo, a.hi < b.hi ? a.hi : b.hi}; }
FG_HD Iv iv_max(Iv a, Iv b) { return {a.lo > b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi}; }
FG_HD Iv iv_clamp(Iv x, Iv lo, Iv hi) { return iv_min(iv_max(x, lo), hi); }
FG_HD Iv iv_abs(Iv a) {
  if (a.lo >= 0) return a;
  if (a.hi <= 0) return iv_neg(a);
  return iv(0, -a.lo > a.hi ? -a.lo : a.hi);
}
FG_HD Iv iv_select(Tri c, Iv a, Iv b) {
  if (!c.may_false) return a;
  if (!c.may_true) return b;
  return {a.lo < b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi};
}

FG_HD Tri tri(bool x) { return {x, !x}; }
FG_HD Tri tri_any() { return {true, true}; }
FG_HD Tri tri_not(Tri a) { return {a.may_false, a.may_true}; }
FG_HD Tri tri_and(Tri a, Tri b) { return {a.may_true && b.may_true, a.may_false || b.may_false}; }
FG_HD Tri tri_or(Tri a, Tri b) { return {a.may_true || b.may_true, a.may_false && b.may_false}; }
// && and || that evaluate their right side only when the left leaves the answer open:
// a causal tile past the diagonal never scans a table (range_of below).
template <class F>
FG_HD Tri tri_and_then(Tri a, F&& b) { return a.may_true ? tri_and(a, b()) : a; }
template <class F>
FG_HD Tri tri_or_else(Tri a, F&& b) { return a.may_false ? tri_or(a, b()) : a; }
FG_HD Tri tri_select(Tri c, Tri a, Tri b) {
  if (!c.may_false) return a;
  if (!c.may_true) return b;
  return {a.may_true || b.may_true, a.may_false || b.may_false};
}
FG_HD Tri iv_lt(Iv a, Iv b) { return {a.lo < b.hi, a.hi >= b.lo}; }
FG_HD Tri iv_le(Iv a, Iv b) { return {a.lo <= b.hi, a.hi > b.lo}; }
FG_HD Tri iv_gt(Iv a, Iv b) { return iv_lt(b, a); }
FG_HD Tri iv_ge(Iv a, Iv b) { return iv_le(b, a); }
FG_HD Tri iv_eq(Iv a, Iv b) {
  return {a.lo <= b.hi && b.lo <= a.hi, !(exact(a) && exact(b) && a.lo == b.lo)};
}
FG_HD Tri iv_ne(Iv a, Iv b) { return tri_not(iv_eq(a, b)); }
FG_HD Tri tri_eq(Tri a, Tri b) {  // bool == bool
  return {(a.may_true && b.may_true) || (a.may_false && b.may_false),
          (a.may_true && b.may_false) || (a.may_false && b.may_true)};
}
FG_HD Tri tri_ne(Tri a, Tri b) { return tri_not(tri_eq(a, b)); }

// Index ranges (a variant's kv_range and q_range, flashgen/analysis/bounds.py): the
// values [lo, hi] an index may take where the mask is true, empty when lo > hi,
// INT32_MIN / INT32_MAX where a side is unbounded.
FG_HD Iv no_index() { return {INT32_MAX, INT32_MIN}; }
// Every int32: an interval rule gave up, possibly because a sum could leave int32
FG_HD bool may_wrap(Iv side) { return side.lo == INT32_MIN && side.hi == INT32_MAX; }
// `left op right` solved for the index as index >= lower and index <= upper (iv_any()
// where it says nothing): [lower.lo, upper.hi], which holds when neither side wraps.
// left and right are the sides over every index value of the call, so a side that could
// wrap there has the interval of every int32, and the comparison then bounds nothing.
FG_HD Iv solved(Iv left, Iv right, Iv lower, Iv upper) {
  return may_wrap(left) || may_wrap(right) ? iv_any() : Iv{lower.lo, upper.hi};
}
FG_HD Iv range_and(Iv a, Iv b) { return {a.lo > b.lo ? a.lo : b.lo, a.hi < b.hi ? a.hi : b.hi}; }
FG_HD Iv range_or(Iv a, Iv b) { return {a.lo < b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi}; }
FG_HD Iv range_shift(Iv a, int64_t by) { return {a.lo + by, a.hi + by}; }

// A tensor read over a tile. Exact when every index is (lengths[b]: one element). When
// only the last index varies (doc[b, q_lo..q_hi]) the read takes the [min, max] of the
// values in range, found by scanning them: a document mask then skips the tiles of
// other documents and runs those inside one document as full. On the GPU the warp scans
// together, each lane every 32nd value, and shuffles combine the lanes -- tile_class is
// only called by converged warps with identical arguments (mask.cuh classify_tile).
// A range longer than kMaxScan, or another varying index: anything.
constexpr int64_t kMaxScan = 1024;
template <class... I>
FG_HD bool all_exact(I... index) {
  return (exact(index) && ...);
}
template <class T, int R>
FG_HD Iv range_of(const TensorRef<T, R>& t, const Iv (&index)[R]) {
  int at[R];
  for (int d = 0; d + 1 < R; ++d) {
    if (!exact(index[d])) return iv_any();
    at[d] = int(index[d].lo);
  }
  // reads clamp indices to [0, size - 1]: a range reads exactly its clamped span
  const int64_t last = t.size[R - 1] - 1;
  const int64_t lo = index[R - 1].lo < 0 ? 0 : (index[R - 1].lo > last ? last : index[R - 1].lo);
  const int64_t hi = index[R - 1].hi < 0 ? 0 : (index[R - 1].hi > last ? last : index[R - 1].hi);
  if (hi - lo + 1 > kMaxScan) return iv_any();
  int lo_value = INT32_MAX, hi_value = INT32_MIN;
#ifdef __CUDA_ARCH__
  for (int64_t i = lo + (threadIdx.x & 31); i <= hi; i += 32) {
    at[R - 1] = int(i);
    const int x = int(t.at_index(at));
    lo_value = x < lo_value ? x : lo_value;
    hi_value = x > hi_value ? x : hi_value;
  }
  for (int lanes = 16; lanes > 0; lanes >>= 1) {
    lo_value = min(lo_value, __shfl_xor_sync(0xffffffffu, lo_value, lanes));
    hi_value = max(hi_value, __shfl_xor_sync(0xffffffffu, hi_value, lanes));
  }
#else
  for (int64_t i = lo; i <= hi; ++i) {
    at[R - 1] = int(i);
    const int x = int(t.at_index(at));
    lo_value = x < lo_value ? x : lo_value;
    hi_value = x > hi_value ? x : hi_value;
  }
#endif
  return {lo_value, hi_value};
}
template <int R, class... I>
FG_HD Iv iv_load(const TensorRef<int, R>& t, I... index) {
  if (all_exact(index...)) return iv(t.at(int(index.lo)...));
  return range_of(t, {index...});
}
template <int R, class... I>
FG_HD Tri tri_load(const TensorRef<bool, R>& t, I... index) {
  if (all_exact(index...)) return tri(t.at(int(index.lo)...));
  const Iv values = range_of(t, {index...});
  return {values.hi != 0, values.lo == 0};
}

}  // namespace fg
