"""Block-sparse layouts -> the tile lists the kernels walk (templates/kernels/sparse.cuh).

A layout marks blocks of block_q x block_k elements visible. The kernels tile at their
own sizes (flashgen/plan/tiles.py), so a layout is turned, once, into two lists at
those sizes: for the forward pass (and the deterministic dQ pass), each Q tile's KV
tiles; for the backward pass, each KV tile's Q tiles. An entry is
2 * tile + (1 if only some of the tile's blocks are visible). Lists are padded rows
[heads, rows, cols] with a count per row: built with sorts on the GPU, no host sync.

Lists are cached with their layout: a built-in pattern's by (spec, sizes, device), a
runtime layout tensor's on the tensor itself (weakly, and rebuilt if it is modified in
place)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from ..ir.nodes import AttentionSpec, BlockSparse
from ..plan.tiles import TilePlan
from ..reference.patterns import fixed_layout


def _tiles_along(visible: torch.Tensor, dim: int, block: int, tile: int, n_tiles: int,
                 reduce) -> torch.Tensor:
    """Blocks along `dim` -> tiles: a tile covers tile/block whole blocks (reduced with
    `reduce`, any or all) or lies inside one block (block/tile tiles per block)."""
    if tile >= block:
        ratio = tile // block
        pad = (-visible.shape[dim]) % ratio
        if pad:   # past the last block: all() ignores it (True), any() too (False)
            shape = list(visible.shape)
            shape[dim] = pad
            fill = reduce is torch.all
            visible = torch.cat([visible, visible.new_full(shape, fill)], dim)
        shape = list(visible.shape)
        shape[dim:dim + 1] = [shape[dim] // ratio, ratio]
        out = reduce(visible.reshape(shape), dim=dim + 1)
    else:
        out = visible.repeat_interleave(block // tile, dim=dim)
    return out.narrow(dim, 0, n_tiles)


def tile_lists(layout: torch.Tensor, block_q: int, block_k: int, tile_q: int, tile_k: int,
               nq: int, nk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(by_q count, by_q tiles, by_kv count, by_kv tiles) of a bool layout
    [heads, q_blocks, kv_blocks] for kernel tiles of tile_q x tile_k (int32)."""
    q_tiles, kv_tiles = -(-nq // tile_q), -(-nk // tile_k)
    any_ = _tiles_along(layout, 1, block_q, tile_q, q_tiles, torch.any)
    any_ = _tiles_along(any_, 2, block_k, tile_k, kv_tiles, torch.any)
    all_ = _tiles_along(layout, 1, block_q, tile_q, q_tiles, torch.all)
    all_ = _tiles_along(all_, 2, block_k, tile_k, kv_tiles, torch.all)
    partial = any_ & ~all_
    by_q = compact(any_, partial)
    by_kv = compact(any_.transpose(1, 2), partial.transpose(1, 2))
    return (*by_q, *by_kv)


def compact(visible: torch.Tensor, partial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, entries) of the tiles along the last dim that are visible, in order:
    entries 2 * tile + partial, padded rows. Sorts on the GPU, no host sync."""
    # a stable sort of "not visible" puts each row's visible tiles first, in order
    order = torch.sort((~visible).to(torch.int8), dim=-1, stable=True).indices
    entries = (2 * order + partial.gather(-1, order).to(order.dtype)).to(torch.int32)
    return visible.sum(-1, dtype=torch.int32).contiguous(), entries.contiguous()


@dataclass
class SparseTiles:
    """One layout and its tile lists for one kernel plan, ready to pack."""
    layout: torch.Tensor                 # bool [heads, q_blocks, kv_blocks], contiguous
    by_q: tuple[torch.Tensor, torch.Tensor]
    by_kv: tuple[torch.Tensor, torch.Tensor]

    def ints(self) -> list[int]:
        """In the order of BlockSparseArgs::read (templates/kernels/sparse.cuh)."""
        heads, qb, kb = self.layout.shape
        out = [self.layout.data_ptr(), heads, qb, kb]
        for count, tiles in (self.by_q, self.by_kv):
            out += [count.data_ptr(), tiles.data_ptr(), 1, *tiles.shape]   # one batch
        return out + [0]


@dataclass
class MaskTiles:
    """A data-dependent mask's tile lists for one call (sparse.cuh): the tiles that
    tile_class() does not skip, entries 2 * tile + partial; rows [batches, heads, ...]."""
    by_q: tuple[torch.Tensor, torch.Tensor]
    by_kv: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def of(cls, forward_classes: torch.Tensor, backward_classes: torch.Tensor) -> MaskTiles:
        """From int8 classes [batches, heads, q_tiles, kv_tiles] (0 skip, 1 full, 2 partial)
        at the forward's and the backward's tile sizes."""
        by_kv = backward_classes.transpose(-1, -2)
        return cls(compact(forward_classes != 0, forward_classes == 2),
                   compact(by_kv != 0, by_kv == 2))

    def ints(self) -> list[int]:
        out = [0, 0, 0, 0]                 # no layout
        for count, tiles in (self.by_q, self.by_kv):
            out += [count.data_ptr(), tiles.data_ptr(), *tiles.shape]
        return out + [1]


DENSE = [0] * 17    # BlockSparseArgs of a spec without lists

_BY_TENSOR = WeakTensorKeyDictionary()


def _build(layout: torch.Tensor, bs: BlockSparse, plan: TilePlan, nq: int, nk: int
           ) -> SparseTiles:
    layout = layout.contiguous()
    f, b = plan.forward, plan.backward
    cq, tq, _, _ = tile_lists(layout, bs.block_q, bs.block_k, f.block_m, f.block_n, nq, nk)
    _, _, ck, tk = tile_lists(layout, bs.block_q, bs.block_k, b.block_m, b.block_n, nq, nk)
    return SparseTiles(layout, (cq, tq), (ck, tk))


def sparse_tiles(spec: AttentionSpec, layout: torch.Tensor | None, plan: TilePlan, nq: int,
                 nk: int, device: torch.device) -> SparseTiles:
    """The lists of a call: of its layout tensor, or of the spec's built-in pattern."""
    if layout is None:
        return _fixed(spec.block_sparse, plan, nq, nk, str(device))
    entries = _BY_TENSOR.setdefault(layout, {})
    key = (layout._version, spec.block_sparse, plan, nq, nk)
    if key not in entries:
        entries.clear()             # an older version of the tensor is never asked again
        entries[key] = _build(layout, spec.block_sparse, plan, nq, nk)
    return entries[key]


@functools.lru_cache(maxsize=64)
def _fixed(bs: BlockSparse, plan: TilePlan, nq: int, nk: int, device: str) -> SparseTiles:
    return _build(fixed_layout(bs, nq, nk, device), bs, plan, nq, nk)
