// The K/V tiles one Q tile visits, streamed through two shared-memory stages.
//
// The forward pass and the deterministic dQ pass both hold one Q tile and walk K/V
// tiles: every tile, or the Q tile's block-sparse list (sparse.cuh), minus the tiles the
// mask analysis skips (mask.cuh). The next tile's cp.async loads are issued before this
// tile computes, so the copy overlaps the math.
#pragma once
#include "args.cuh"
#include "copy.cuh"
#include "mask.cuh"
#include "mma.cuh"

namespace fg {

template <class V, class T, int D, int Dv, int BM, int BN, int Threads>
struct KvStream {
  static constexpr int kLdK = D + kSmemPad, kLdV = Dv + kSmemPad;
  static constexpr int kK = BN * kLdK, kV = BN * kLdV;  // elements per stage
  static constexpr int kElements = 2 * (kK + kV);       // both stages

  T* sK;  // [2][BN][D + pad]
  T* sV;  // [2][BN][Dv + pad]
  const typename V::Params& p;
  const Shape& n;
  const BlockSparseArgs& sparse;
  const Strided4<const T>& k;
  const Strided4<const T>& v;
  int b, h, hk, q0;
  TileRow row;

  __device__ __forceinline__ TileMask classify(int i) const {
    return classify_tile<V, BM, BN>(p, b, h, q0, row.tile(i) * BN, n.q_len, n.kv_len,
                                    row.layout_partial(i));
  }
  // the next position after i whose tile is not skipped (row.size() at the end)
  __device__ __forceinline__ int next(int i) const {
    for (++i; i < row.size(); ++i)
      if (!classify(i).skip()) return i;
    return row.size();
  }
  __device__ __forceinline__ void load(int i, int stage) const {
    const int k0 = row.tile(i) * BN, rows = n.kv_len - k0;
    load_tile<BN, D, Threads>(sK + stage * kK, k.at(b, hk, k0), k.row, rows, k.at(b, hk, 0));
    load_tile<BN, Dv, Threads>(sV + stage * kV, v.at(b, hk, k0), v.row, rows, v.at(b, hk, 0));
  }

  // body(kv0, tile, sK stage, sV stage) for every tile visited, in order. Loads issued
  // before the call (the Q tile) land with the first K/V tile.
  template <class Body>
  __device__ __forceinline__ void for_each(Body&& body) const {
    int i = next(-1);
    if (i < row.size()) load(i, 0);
    cp_async_commit();
    for (int stage = 0; i < row.size(); stage ^= 1) {
      const TileMask tile = classify(i);
      cp_async_wait<0>();
      __syncthreads();  // this stage has landed, and every warp is done with the other one
      const int i_next = next(i);
      if (i_next < row.size()) load(i_next, stage ^ 1);
      cp_async_commit();
      body(row.tile(i) * BN, tile, sK + stage * kK, sV + stage * kV);
      i = i_next;
    }
  }
};

}  // namespace fg
