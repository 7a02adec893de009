// What the host passes to the kernels, and how it gets there.
//
// The host (flashgen/runtime/launch.py) calls an extern "C" launcher with one int64
// array and one float array; ArgReader takes values off them in the order the
// launcher and the variant's read_params() name them. The same order is written, once,
// in flashgen/runtime/launch.py. Tensors q, k, v, dO may have any strides except in
// the last dim; the outputs the host allocates are contiguous.
#pragma once
#include <cstdint>

#include "dropout.cuh"
#include "sparse.cuh"

namespace fg {

struct ArgReader {
  const int64_t* ints;
  const float* floats;
  int next_int_ = 0, next_float_ = 0;
  int64_t i64() { return ints[next_int_++]; }
  int i32() { return static_cast<int>(ints[next_int_++]); }
  float f32() { return floats[next_float_++]; }
  template <class T>
  T* ptr() { return reinterpret_cast<T*>(static_cast<intptr_t>(ints[next_int_++])); }
};

// A strided [batch, head, row, col] tensor: base pointer and the strides of the first three.
template <class T>
struct Strided4 {
  T* data;
  int64_t batch, head, row;
  __device__ __forceinline__ T* at(int b, int h, int r) const {
    return data + b * batch + h * head + int64_t(r) * row;
  }
  // The same tensor from row r on: a packed (varlen) sequence's rows. Packed tensors come
  // with batch stride 0, so at(b, ...) of the result is the sequence's own row.
  __device__ __forceinline__ Strided4 from_row(int r) const {
    return {data + int64_t(r) * row, batch, head, row};
  }
  static Strided4 read(ArgReader& in) {
    Strided4 s;
    s.data = in.ptr<T>();
    s.batch = in.i64();
    s.head = in.i64();
    s.row = in.i64();
    return s;
  }
};

// The call's sizes. A padded batch has B sequences of q_len queries and kv_len keys. A
// packed (varlen) batch concatenates sequences of their own lengths along the rows
// (FlashAttention-2's varlen layout: q [total_q, H, d]): cu_q / cu_k hold each sequence's
// first row, [B + 1]; q_len / kv_len are then the longest sequence's (the grid's extent),
// and for_sequence(b) gives a CTA its own sequence's lengths and first rows. Masks, score
// expressions and tile skipping see only the per-sequence values, so a varlen sequence is
// computed exactly as the same sequence alone in a batch of one.
struct Shape {
  int batch, heads, kv_heads, q_len, kv_len;
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e)
  const int* cu_q;   // varlen: [batch + 1] first query row of each sequence; null: padded
  const int* cu_k;   // varlen: [batch + 1] first key row of each sequence
  int q_rows;        // rows per (batch, head) of the fp32 row buffers: q_len, or total_q
  // A paged KV cache (forward only): K/V row r of batch entry b is row r % page_size of
  // page block_table[b][r / page_size] (k and v are then [pages, Hkv, page_size, d] views);
  // kv_lens[b] keys of it are valid, kv_len being the table's extent. Null: no paging.
  const int* kv_lens;
  const int* block_table;
  int pages_per_seq, page_size;
  int q_start = 0, kv_start = 0;  // this sequence's first query and key row (for_sequence)
  static Shape read(ArgReader& in) {
    Shape s;
    s.batch = in.i32();
    s.heads = in.i32();
    s.kv_heads = in.i32();
    s.q_len = in.i32();
    s.kv_len = in.i32();
    s.scale = in.f32();
    s.scale_log2 = s.scale * 1.4426950408889634f;
    s.cu_q = in.ptr<const int>();
    s.cu_k = in.ptr<const int>();
    s.q_rows = in.i32();
    s.kv_lens = in.ptr<const int>();
    s.block_table = in.ptr<const int>();
    s.pages_per_seq = in.i32();
    s.page_size = in.i32();
    return s;
  }
  __host__ __device__ __forceinline__ bool paged() const { return block_table != nullptr; }
  __host__ __device__ __forceinline__ bool varlen() const { return cu_q != nullptr; }
  // The shape as sequence b's CTAs see it (a padded batch: unchanged).
  __device__ __forceinline__ Shape for_sequence(int b) const {
    Shape s = *this;
    if (varlen()) {
      s.q_start = cu_q[b];
      s.q_len = cu_q[b + 1] - s.q_start;
      s.kv_start = cu_k[b];
      s.kv_len = cu_k[b + 1] - s.kv_start;
    }
    if (kv_lens) s.kv_len = kv_lens[b];
    return s;
  }
  // Row q of (b, h) in the fp32 row buffers (lse, delta, out_f32, split-KV partials):
  // [B, H, Nq] for a padded batch, [H, total_q] for a packed one.
  __device__ __forceinline__ int64_t row(int b, int h, int q) const {
    return (int64_t(varlen() ? 0 : b) * heads + h) * q_rows + q_start + q;
  }
  // How many such rows there are: the row-parallel kernels (delta, combine) walk them.
  __host__ __device__ __forceinline__ int64_t rows() const {
    return int64_t(varlen() ? 1 : batch) * heads * q_rows;
  }
};

template <class T>
struct ForwardArgs {
  Shape shape;
  Strided4<const T> q, k, v;
  Strided4<T> out;     // [B, H, Nq, Dv]
  float* lse;          // [B, H, Nq]
  // Kept for a backward pass (flashgen/runtime/launch.py, SAVE_*): O in fp32, contiguous
  // [B, H, Nq, Dv], or null; exact_p: P V sums P unrounded (forward.cuh).
  float* out_f32;
  int exact_p;
  // Split-KV (splits > 1): each of `splits` CTAs of a Q tile (blockIdx.z) takes a part of
  // its K/V tiles and writes its normalised partial O and lse here, fp32, contiguous
  // [splits, B, H, Nq, Dv] and [splits, B, H, Nq]; combine_kernel merges them by lse.
  int splits;
  float* partial_out;
  float* partial_lse;
  // The persistent forward (forward_sm90_ws.cuh): an int the host zeroes before each call,
  // from which the CTAs draw their units after the first; null for the other kernels
  int* tickets;
  Dropout dropout;
  BlockSparseArgs sparse;
  static ForwardArgs read(ArgReader& in) {
    ForwardArgs a;
    a.shape = Shape::read(in);
    a.q = Strided4<const T>::read(in);
    a.k = Strided4<const T>::read(in);
    a.v = Strided4<const T>::read(in);
    a.out = Strided4<T>::read(in);
    a.lse = in.ptr<float>();
    a.out_f32 = in.ptr<float>();
    a.exact_p = in.i32();
    a.splits = in.i32();
    a.partial_out = in.ptr<float>();
    a.partial_lse = in.ptr<float>();
    a.tickets = in.ptr<int>();
    a.dropout = Dropout::read(in);
    a.sparse = BlockSparseArgs::read(in);
    return a;
  }
};

template <class T>
struct BackwardArgs {
  Shape shape;
  Strided4<const T> q, k, v, dout;
  Strided4<const T> out;  // the forward pass's output
  const float* out_f32;   // the same in fp32 ([B, H, Nq, Dv], contiguous), or null
  const float* lse;    // [B, H, Nq]
  const float* dlse;   // [B, H, Nq]: the gradient flowing into lse, or null
  float* delta;        // [B, H, Nq]: rowsum(dO * O) - dlse, written by delta_kernel
  float* dq_accum;     // fp32, zeroed by delta_kernel: [B, H, Nq rounded up to BM, D] in
                       // fragment order (backward.cuh DqFragments); null when deterministic
  Strided4<T> dq;      // [B, H, Nq, D]
  Strided4<T> dk, dv;  // [B, Hkv, Nk, D], [B, Hkv, Nk, Dv]
  // dQ, dK, dV in fp32 (data non-null: written instead of dq, dk, dv): ring attention
  // sums several calls' gradients, which must not each be rounded (runtime/ring.py).
  Strided4<float> dq_f32, dk_f32, dv_f32;
  int deterministic;   // 1: dQ without atomics (dq_kernel), bit-identical run to run
  Dropout dropout;
  BlockSparseArgs sparse;
  static BackwardArgs read(ArgReader& in) {
    BackwardArgs a;
    a.shape = Shape::read(in);
    a.q = Strided4<const T>::read(in);
    a.k = Strided4<const T>::read(in);
    a.v = Strided4<const T>::read(in);
    a.dout = Strided4<const T>::read(in);
    a.out = Strided4<const T>::read(in);
    a.out_f32 = in.ptr<const float>();
    a.lse = in.ptr<const float>();
    a.dlse = in.ptr<const float>();
    a.delta = in.ptr<float>();
    a.dq_accum = in.ptr<float>();
    a.dq = Strided4<T>::read(in);
    a.dk = Strided4<T>::read(in);
    a.dv = Strided4<T>::read(in);
    a.dq_f32 = Strided4<float>::read(in);
    a.dk_f32 = Strided4<float>::read(in);
    a.dv_f32 = Strided4<float>::read(in);
    a.deterministic = in.i32();
    a.dropout = Dropout::read(in);
    a.sparse = BlockSparseArgs::read(in);
    return a;
  }
};

}  // namespace fg
