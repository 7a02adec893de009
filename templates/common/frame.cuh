// Where a call's rows sit in the sequences the spec describes.
//
// A plain call is the whole sequence: its query row i is the spec's q_idx = i and the
// spec's q_len is the call's. Context parallelism (flashgen/runtime/ring.py) runs a
// sequence in shards, one call per (query shard, key shard): the spec must still see
// global indices and lengths, so that a causal mask, ALiBi's distance or doc[b, q_idx]
// mean what they mean on one GPU. A Frame says how: q_idx = q_first + i and
// q_len = the call's rows + q_extra (the same for keys). Every function of a generated
// FramedVariant (variant.cuh) maps its arguments through it on entry; the kernels' own
// bounds (rows past the call's end) stay in the call's indices. Whole-sequence kernels
// (Variant) ignore it: its adds cost the causal forward 16 B of spills and ALiBi's dK/dV
// kernel 64 B (ptxas, sm_90a bf16 d128), so frames have kernels of their own. (Dropout's
// draws add the frame's first rows in every kernel, dropout.cuh: two adds per fragment
// beside a 10-round Philox, with the frame read from the dropout arguments.)
#pragma once
#include "expr.cuh"

namespace fg {

struct Frame {
  int q_first, kv_first;  // the spec's index of the call's first query / key row
  int q_extra, kv_extra;  // the spec's length minus the call's
  template <class Reader>
  static Frame read(Reader& in) {
    Frame f;
    f.q_first = in.i32();
    f.kv_first = in.i32();
    f.q_extra = in.i32();
    f.kv_extra = in.i32();
    return f;
  }
  // the call's indices and lengths -> the spec's, in place
  FG_HD void to_spec(int& q_idx, int& kv_idx, int& q_len, int& kv_len) const {
    q_idx += q_first;
    kv_idx += kv_first;
    lengths_to_spec(q_len, kv_len);
  }
  FG_HD void lengths_to_spec(int& q_len, int& kv_len) const {
    q_len += q_extra;
    kv_len += kv_extra;
  }
  // a tile's index ranges [q_lo, q_hi] x [kv_lo, kv_hi] (tile_class)
  FG_HD void ranges_to_spec(int& q_lo, int& q_hi, int& kv_lo, int& kv_hi, int& q_len,
                            int& kv_len) const {
    q_lo += q_first;
    q_hi += q_first;
    kv_lo += kv_first;
    kv_hi += kv_first;
    lengths_to_spec(q_len, kv_len);
  }
};

}  // namespace fg
