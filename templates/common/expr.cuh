// The spec language's operations in CUDA, with the language's exact semantics.
//
// Generated variant headers (templates/common/variant.cuh.j2) call these; each
// mirrors what flashgen/reference computes, so that a kernel and the reference
// agree on every edge case: int32 wraps, `//` and `%` round toward -inf and give 0
// for a zero divisor, min/max propagate NaN, float->int saturates, tensor reads clamp.
#pragma once
#include <cstdint>

// Host and device: the host build of a variant lets CPU tests check tile_class().
#define FG_HD __host__ __device__ __forceinline__

namespace fg {

FG_HD float inf() { return __builtin_huge_valf(); }
FG_HD float nan() { return __builtin_nanf(""); }

// ---- int32 arithmetic that wraps (signed overflow is undefined in C++)
FG_HD int wrap_add(int a, int b) { return int(unsigned(a) + unsigned(b)); }
FG_HD int wrap_sub(int a, int b) { return int(unsigned(a) - unsigned(b)); }
FG_HD int wrap_mul(int a, int b) { return int(unsigned(a) * unsigned(b)); }

FG_HD int floordiv(int a, int b) {
  if (b == 0) return 0;
  if (b == -1) return wrap_sub(0, a);          // INT_MIN / -1 wraps, as in the reference
  int q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
FG_HD int mod(int a, int b) {
  if (b == 0 || b == -1) return 0;
  int r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}

// ---- float `//` and `%` as torch.div(rounding_mode="floor") and torch.remainder
FG_HD float floordiv(float a, float b) {
  if (b == 0.0f) return a / b;
  float m = fmodf(a, b);
  float d = (a - m) / b;
  if (m != 0.0f && ((b < 0.0f) != (m < 0.0f))) d -= 1.0f;
  if (d == 0.0f) return copysignf(0.0f, a / b);
  float f = floorf(d);
  return (d - f > 0.5f) ? f + 1.0f : f;
}
FG_HD float mod(float a, float b) {
  float m = fmodf(a, b);
  return (m != 0.0f && ((b < 0.0f) != (m < 0.0f))) ? m + b : m;
}

// ---- float division and the function table (flashgen/ir/functions.py)
//
// A score expression runs once per score, beside MMAs that leave a few instructions
// per score: on the GPU these use the multi-function unit's ex2 and rcp (relative
// error ~1e-7, against bf16's 4e-3 and fp16's 5e-4 in the inputs) instead of the
// IEEE-exact library code (tanhf: ~20 instructions and a branch; x / y: ~10 and a
// branch). The host keeps the exact forms.
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float approx_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// 1 / x within 1 ulp, subnormal results kept (1 / inf = 0, 1 / 0 = inf)
__device__ __forceinline__ float approx_rcp(float x) {
  float y;
  asm("rcp.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
#endif
// a / b within 2 ulp; a divisor that does not change over a loop costs one rcp outside it
FG_HD float fdiv(float a, float b) {
#ifdef __CUDA_ARCH__
  return a * approx_rcp(b);
#else
  return a / b;
#endif
}
FG_HD float exp(float x) {
#ifdef __CUDA_ARCH__
  return approx_exp2(x * 1.4426950408889634f);
#else
  return ::expf(x);
#endif
}
FG_HD float log(float x) { return ::logf(x); }
FG_HD float sqrt(float x) { return ::sqrtf(x); }
FG_HD float tanh(float x) {
#ifdef __CUDA_ARCH__
  // 1 - 2 / (e^2x + 1): e^2x = inf gives 1, e^2x = 0 gives -1, NaN stays NaN
  return 1.0f - 2.0f * approx_rcp(approx_exp2(x * 2.8853900817779268f) + 1.0f);
#else
  return ::tanhf(x);
#endif
}
FG_HD float pow(float x, float y) { return ::powf(x, y); }
FG_HD float sigmoid(float x) {
#ifdef __CUDA_ARCH__
  return approx_rcp(1.0f + exp(-x));
#else
  return 1.0f / (1.0f + ::expf(-x));
#endif
}
FG_HD int abs(int x) { return x < 0 ? wrap_sub(0, x) : x; }
FG_HD float abs(float x) { return ::fabsf(x); }
FG_HD int min(int a, int b) { return a < b ? a : b; }
FG_HD int max(int a, int b) { return a > b ? a : b; }
FG_HD float min(float a, float b) {
  return (a != a || b != b) ? nan() : ::fminf(a, b);
}
FG_HD float max(float a, float b) {
  return (a != a || b != b) ? nan() : ::fmaxf(a, b);
}
FG_HD int clamp(int x, int lo, int hi) { return min(max(x, lo), hi); }
FG_HD float clamp(float x, float lo, float hi) { return min(max(x, lo), hi); }
// cvt.rmi/rpi.s32.f32 saturate to the int32 range and give 0 for NaN
FG_HD int saturate_to_int(float x) {
  return x != x ? 0 : x >= 2147483648.0f ? 2147483647 : x < -2147483648.0f ? (-2147483647 - 1) : int(x);
}
FG_HD int floor_to_int(float x) {
#ifdef __CUDA_ARCH__
  return __float2int_rd(x);
#else
  return saturate_to_int(::floorf(x));
#endif
}
FG_HD int ceil_to_int(float x) {
#ifdef __CUDA_ARCH__
  return __float2int_ru(x);
#else
  return saturate_to_int(::ceilf(x));
#endif
}

// The element offset of idx in a tensor, every index clamped to [0, size - 1]. With
// max / min, not comparisons: nvcc turned the comparisons into two branches per read,
// and a score that reads tables at every element of an unrolled tile then gave ptxas
// thousands of basic blocks (fuzz seed 47: ptxas 324 s on one forward kernel, 13 s so).
template <int Rank>
FG_HD int64_t clamped_offset(const int (&idx)[Rank], const int* size, const int64_t* stride) {
  int64_t offset = 0;
#pragma unroll
  for (int d = 0; d < Rank; ++d) {
    const int i = max(0, min(idx[d], size[d] - 1));
    offset += int64_t(i) * stride[d];
  }
  return offset;
}

// A runtime tensor parameter: reads clamp every index to [0, size - 1], so a spec
// can never read out of bounds; offsets are 64-bit.
template <typename T, int Rank>
struct TensorRef {
  const T* data;
  int64_t stride[Rank];
  int size[Rank];

  template <typename... I>
  FG_HD T at(I... index) const {
    static_assert(sizeof...(I) == Rank, "index count must match the tensor's rank");
    return at_index({int(index)...});
  }

  // A plain load, not __ldg: nvcc's __ldg is an asm statement, which the compiler does not
  // merge, so a score reading inv_temp[h] at every element of a tile loaded it 64 times
  // per thread and tile (the temperature spec's forward: 459-590 global loads a kernel,
  // 15-81 so). On sm_80 and later both go through the L1.
  FG_HD T at_index(const int (&index)[Rank]) const {
    return data[clamped_offset<Rank>(index, size, stride)];
  }

  // Filled by the launcher from the host's argument array (templates/kernels/args.cuh).
  template <class Reader>
  static TensorRef read(Reader& in) {
    TensorRef t;
    t.data = in.template ptr<const T>();
    for (int d = 0; d < Rank; ++d) t.size[d] = in.i32();
    for (int d = 0; d < Rank; ++d) t.stride[d] = in.i64();
    return t;
  }
};

// The gradient of a float tensor parameter: fp32, accumulated with atomics; clamps its
// indices exactly as TensorRef::at, so each read gets its gradient where it read.
// data == nullptr: this gradient is not wanted.
template <int Rank>
struct GradRef {
  float* data;
  int64_t stride[Rank];
  int size[Rank];

  template <typename... I>
  __device__ __forceinline__ void add(float value, I... index) const {
    const int64_t offset = clamped_offset<Rank>({int(index)...}, size, stride);
    atomicAdd(data + offset, value);
  }

  // value summed over the warp's 32 lanes and added by lane 0: one atomic per warp for
  // an element every lane adds to. All 32 lanes must call it.
  template <typename... I>
  __device__ __forceinline__ void add_warp(float value, I... index) const {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
      value += __shfl_xor_sync(0xffffffffu, value, offset);
    if ((threadIdx.x & 31) == 0) add(value, index...);
  }

  template <class Reader>
  static GradRef read(Reader& in) {
    GradRef g;
    g.data = in.template ptr<float>();
    for (int d = 0; d < Rank; ++d) g.size[d] = in.i32();
    for (int d = 0; d < Rank; ++d) g.stride[d] = in.i64();
    return g;
  }
};

}  // namespace fg
