// Online softmax in base 2 (FlashAttention-2).
//
// Scores become log2 units (x * scale * log2(e)) inside the exponent, one FFMA and one ex2.
// Each thread holds two rows of an m16 tile (rows g and g+8) and a quarter of their
// columns; the four threads of a quad share a row, so row reductions are two shuffles.
// The running sum stays per thread (a partial row sum) until the end: the rescale
// factor is the same for the whole quad, so the partial sums can be rescaled apart.
// A row that has seen no visible key keeps max = -inf; it is exponentiated against 0
// instead, giving p = 0 (never NaN), and ends with O = 0 and lse = -inf.
#pragma once
#include "expr.cuh"

namespace fg {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The exponent base of a row: its max, or 0 while the row has no visible key.
__device__ __forceinline__ float finite_or_zero(float m) { return m == -inf() ? 0.0f : m; }

// Scores arrive unscaled: x * mult is the score in log2 units (mult = scale * log2(e)
// for a spec without a score expression, log2(e) after one), so the scale rides in
// the exponent's FFMA instead of costing a multiply per element. A masked element is
// `masked_score(mult)`: -inf, or +inf under a negative mult, so x * mult is -inf.
__device__ __forceinline__ float masked_score(float mult) { return mult < 0.0f ? inf() : -inf(); }

__device__ __forceinline__ float quad_min(float x) {
  x = fminf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fminf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

template <int NT>
struct OnlineSoftmax {
  float row_max[2] = {-inf(), -inf()};  // log2 units
  float row_sum[2] = {0.0f, 0.0f};      // this thread's partial sum

  // x: one S tile, unscaled (see above) -> probabilities, unnormalised.
  // kOffset: this thread's scores of row r are x * mult + offset[r] in log2 units (an
  // affine bias taken once per row, forward.cuh add_affine_bias); the offset differs
  // between the quad's threads, so it is added to each thread's largest before the
  // row's shuffles, and joins the exponent's FFMA. mult is positive there: the host runs
  // a negative scale as -Q (launch.py forward, exact), because the branch on mult's sign
  // took registers that ptxas spilled (ALiBi's bias under a band mask, sm_90a). Without
  // kOffset the code is as it was (removing the branch there measured dense d = 64 3-4 %
  // slower, PERF.md).
  // alpha: per row, the factor the output accumulated so far must be scaled by.
  template <bool kOffset = false>
  __device__ __forceinline__ void step(float (&x)[NT][4], float mult, const float (&offset)[2],
                                       float (&alpha)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // the largest x * mult: the largest x, or under a negative mult the smallest
      float m;
      if (kOffset || mult >= 0.0f) {
        m = -inf();
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) m = fmaxf(m, fmaxf(x[nt][2 * r], x[nt][2 * r + 1]));
        m = kOffset ? quad_max(fmaf(m, mult, offset[r])) : quad_max(m);
      } else {
        m = inf();
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) m = fminf(m, fminf(x[nt][2 * r], x[nt][2 * r + 1]));
        m = quad_min(m);
      }
      m = fmaxf(row_max[r], kOffset ? m : m * mult);  // -inf while the row has no visible key
      const float base = finite_or_zero(m);
      alpha[r] = fast_exp2(row_max[r] - base);  // exp2(-inf) = 0 on the first visible tile
      row_max[r] = m;
      const float shift = kOffset ? offset[r] - base : -base;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        x[nt][2 * r] = fast_exp2(fmaf(x[nt][2 * r], mult, shift));
        x[nt][2 * r + 1] = fast_exp2(fmaf(x[nt][2 * r + 1], mult, shift));
        sum += x[nt][2 * r] + x[nt][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * alpha[r] + sum;
    }
  }

  // After the last tile: 1 / (row sum) per row (0 for an empty row), and lse (natural log).
  // A NaN sum (a NaN or +inf score in the row) stays NaN in both, as in the reference:
  // testing `sum > 0` instead would turn it into an empty row, a silent wrong answer.
  __device__ __forceinline__ void finish(float (&inv_sum)[2], float (&lse)[2]) const {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float sum = quad_sum(row_sum[r]);
      inv_sum[r] = sum == 0.0f ? 0.0f : 1.0f / sum;
      lse[r] = sum == 0.0f ? -inf() : (row_max[r] + __log2f(sum)) * kLn2;
    }
  }
};

}  // namespace fg
