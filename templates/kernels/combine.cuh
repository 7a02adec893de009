// Split-KV (flash-decoding)'s second step. With few query rows and many keys, one CTA per
// Q tile leaves most SMs idle, so the forward kernel runs `splits` CTAs per Q tile, each
// over a contiguous part of its K/V tiles (sparse.cuh TileRow::split), each writing O and
// lse normalised over its own keys. This kernel merges them, one warp per query row:
//   lse = log sum_s exp(lse_s),   O = sum_s exp(lse_s - lse) O_s.
// A part that saw no key (lse_s = -inf) weighs 0; a row no part saw keeps O = 0 and
// lse = -inf (a fully masked row); a NaN or +inf lse_s makes the row NaN, as the one-CTA
// kernel's would be.
#pragma once
#include "args.cuh"
#include "launch.cuh"
#include "mma.cuh"

namespace fg {

// A decoding call of a few rows waits on this kernel's loads, not their bytes (B = 1, H = 16:
// 16 rows, 8 splits), so the loads are laid out to be in flight together: a warp's lanes
// read the splits' lse side by side and reduce them by shuffles; then, split by split,
// every lane keeps its Dv / 32 columns in registers, so that the loop body is a handful of
// independent loads, unrolled by 4 (the columns outside, the splits inside, read them one
// dependent round after another).
template <class T, int Dv>
__global__ void __launch_bounds__(256) combine_kernel(const ForwardArgs<T> a) {
  // launched as the forward kernel's dependent (forward.cu.j2): its partial results are
  // complete and visible only past this
  wait_for_prerequisite_grid();
  const Shape& n = a.shape;
  const int64_t rows = n.rows();
  const int64_t row = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);  // over Shape::row's rows
  if (row >= rows) return;
  const int lane = threadIdx.x & 31;
  constexpr unsigned kWarp = 0xffffffffu;
  const float inf = __int_as_float(0x7f800000);
  // the largest lse, and whether any is NaN or +inf (splits > 32: a lane takes several)
  float top = -inf;
  bool nan = false;
  for (int s = lane; s < a.splits; s += 32) {
    const float l = a.partial_lse[s * rows + row];
    nan |= isnan(l) || l == inf;
    top = fmaxf(top, l);
  }
  nan = __any_sync(kWarp, nan);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) top = fmaxf(top, __shfl_xor_sync(kWarp, top, offset));
  float sum = 0.0f;
  if (top != -inf) {
    for (int s = lane; s < a.splits; s += 32) sum += expf(a.partial_lse[s * rows + row] - top);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(kWarp, sum, offset);
  }
  const float lse = nan ? __int_as_float(0x7fffffff) : sum == 0.0f ? -inf : top + logf(sum);
  constexpr int kCols = (Dv + 31) / 32;  // a lane's columns: lane, lane + 32, ...
  float x[kCols];
#pragma unroll
  for (int j = 0; j < kCols; ++j) x[j] = 0.0f;
  if (sum != 0.0f && !nan) {
    const float* part = a.partial_out + row * Dv + lane;
#pragma unroll 4
    for (int s = 0; s < a.splits; ++s) {
      // the same lse in every lane (one broadcast load); a part that saw no key weighs 0
      // and its O, never written, is not read into the sum
      const float l = a.partial_lse[s * rows + row];
      const float w = l != -inf ? expf(l - lse) : 0.0f;
      const float* o = part + s * rows * Dv;
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        if (Dv % 32 == 0 || lane + 32 * j < Dv) {
          const float v = o[32 * j];
          x[j] += w != 0.0f ? w * v : 0.0f;
        }
      }
    }
  }
  if (nan) {
#pragma unroll
    for (int j = 0; j < kCols; ++j) x[j] = __int_as_float(0x7fffffff);
  }
  // a packed batch's rows are [H, total_q] and its out has batch stride 0: bh = h
  const int q = int(row % n.q_rows), bh = int(row / n.q_rows);
  T* out = a.out.at(bh / n.heads, bh % n.heads, q);
#pragma unroll
  for (int j = 0; j < kCols; ++j) {
    const int c = lane + 32 * j;
    if (Dv % 32 == 0 || c < Dv) {
      out[c] = T(x[j]);
      if (a.out_f32) a.out_f32[row * Dv + c] = x[j];
    }
  }
  if (lane == 0) a.lse[row] = lse;
}

}  // namespace fg
