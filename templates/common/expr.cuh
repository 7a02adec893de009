// The spec language's operations in CUDA, with the language's exact semantics.
//
// Generated variant headers (templates/common/variant.cuh.j2) call these; each
// mirrors what flashgen/reference computes, so that a kernel and the reference
// agree on every edge case: int32 wraps, `//` and `%` round toward -inf and give 0
// for a zero divisor, min/max propagate NaN, float->int saturates, tensor reads clamp.
#pragma once
#include <cstdint>

namespace fg {

__device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float nan() { return __int_as_float(0x7fffffff); }

// ---- int32 arithmetic that wraps (signed overflow is undefined in C++)
__device__ __forceinline__ int wrap_add(int a, int b) { return int(unsigned(a) + unsigned(b)); }
__device__ __forceinline__ int wrap_sub(int a, int b) { return int(unsigned(a) - unsigned(b)); }
__device__ __forceinline__ int wrap_mul(int a, int b) { return int(unsigned(a) * unsigned(b)); }

__device__ __forceinline__ int floordiv(int a, int b) {
  if (b == 0) return 0;
  if (b == -1) return wrap_sub(0, a);          // INT_MIN / -1 wraps, as in the reference
  int q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
__device__ __forceinline__ int mod(int a, int b) {
  if (b == 0 || b == -1) return 0;
  int r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}

// ---- float `//` and `%` as torch.div(rounding_mode="floor") and torch.remainder
__device__ __forceinline__ float floordiv(float a, float b) {
  if (b == 0.0f) return a / b;
  float m = fmodf(a, b);
  float d = (a - m) / b;
  if (m != 0.0f && ((b < 0.0f) != (m < 0.0f))) d -= 1.0f;
  if (d == 0.0f) return copysignf(0.0f, a / b);
  float f = floorf(d);
  return (d - f > 0.5f) ? f + 1.0f : f;
}
__device__ __forceinline__ float mod(float a, float b) {
  float m = fmodf(a, b);
  return (m != 0.0f && ((b < 0.0f) != (m < 0.0f))) ? m + b : m;
}

// ---- the function table (flashgen/ir/functions.py)
__device__ __forceinline__ float exp(float x) { return ::expf(x); }
__device__ __forceinline__ float log(float x) { return ::logf(x); }
__device__ __forceinline__ float sqrt(float x) { return ::sqrtf(x); }
__device__ __forceinline__ float tanh(float x) { return ::tanhf(x); }
__device__ __forceinline__ float pow(float x, float y) { return ::powf(x, y); }
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + ::expf(-x)); }
__device__ __forceinline__ int abs(int x) { return x < 0 ? wrap_sub(0, x) : x; }
__device__ __forceinline__ float abs(float x) { return ::fabsf(x); }
__device__ __forceinline__ int min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int max(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ float min(float a, float b) {
  return (a != a || b != b) ? nan() : ::fminf(a, b);
}
__device__ __forceinline__ float max(float a, float b) {
  return (a != a || b != b) ? nan() : ::fmaxf(a, b);
}
__device__ __forceinline__ int clamp(int x, int lo, int hi) { return min(max(x, lo), hi); }
__device__ __forceinline__ float clamp(float x, float lo, float hi) { return min(max(x, lo), hi); }
// cvt.rmi/rpi.s32.f32 saturate to the int32 range and give 0 for NaN
__device__ __forceinline__ int floor_to_int(float x) { return __float2int_rd(x); }
__device__ __forceinline__ int ceil_to_int(float x) { return __float2int_ru(x); }

// A runtime tensor parameter: reads clamp every index to [0, size - 1], so a spec
// can never read out of bounds; offsets are 64-bit.
template <typename T, int Rank>
struct TensorRef {
  const T* data;
  int64_t stride[Rank];
  int size[Rank];

  template <typename... I>
  __device__ __forceinline__ T at(I... index) const {
    static_assert(sizeof...(I) == Rank, "index count must match the tensor's rank");
    const int idx[Rank] = {int(index)...};
    int64_t offset = 0;
#pragma unroll
    for (int d = 0; d < Rank; ++d) {
      int i = idx[d] < 0 ? 0 : (idx[d] >= size[d] ? size[d] - 1 : idx[d]);
      offset += int64_t(i) * stride[d];
    }
    return __ldg(data + offset);
  }
};

}  // namespace fg
