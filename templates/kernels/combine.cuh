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
  const float inf = __int_as_float(0x7f800000);
  float top = -inf;
  bool nan = false;
  for (int s = 0; s < a.splits; ++s) {
    const float l = a.partial_lse[s * rows + row];
    nan |= isnan(l) || l == inf;
    top = fmaxf(top, l);
  }
  float sum = 0.0f;
  if (top != -inf) {
    for (int s = 0; s < a.splits; ++s) sum += expf(a.partial_lse[s * rows + row] - top);
  }
  const float lse = nan ? __int_as_float(0x7fffffff) : sum == 0.0f ? -inf : top + logf(sum);
  // a packed batch's rows are [H, total_q] and its out has batch stride 0: bh = h
  const int q = int(row % n.q_rows), bh = int(row / n.q_rows);
  T* out = a.out.at(bh / n.heads, bh % n.heads, q);
  for (int c = lane; c < Dv; c += 32) {
    float x = 0.0f;
    if (sum != 0.0f || nan) {
      for (int s = 0; s < a.splits; ++s) {
        const float l = a.partial_lse[s * rows + row];
        if (l != -inf) x += expf(l - lse) * a.partial_out[(s * rows + row) * Dv + c];
      }
    }
    out[c] = T(x);
    if (a.out_f32) a.out_f32[row * Dv + c] = x;
  }
  if (lane == 0) a.lse[row] = lse;
}

}  // namespace fg
