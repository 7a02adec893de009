"""Tile planning: block sizes and warps per (head dim, value dim), for sm_80 and sm_90.

The plan is written into the header comment of every generated kernel source and
printed by `flashgen explain`. Rules, from the register and shared-memory budgets:

forward -- 4 warps; each owns BM / 4 query rows (two m16 tiles at BM = 128, so each
  K/V fragment read from shared memory feeds two MMAs). Per thread the output
  accumulator takes (BM / 4) * Dv / 32 registers and a score tile (BM / 4) * BN / 32,
  which sets BN: 128 keys up to d = 64, 64 up to 128; above that BM = 64 (one m16 tile
  per warp) with BN = 64, and 32 at 256. Under 255 registers per thread two CTAs of 128
  threads share an SM; shared memory (Q and two K/V stages, padded rows) is at most
  102 KiB per CTA, so two fit sm_90's 227 KiB (one fits sm_80's 163 KiB).
backward -- BM = BN = 64. dK and dV stay in registers for the whole CTA:
  (D + Dv) / 2 / (column splits) floats per thread. 4 warps up to d = 64, else 8, split
  2 ways over columns. Q/dO are double-buffered unless two stages would not fit
  sm_80's shared memory (d >= 192: one stage).
block-sparse -- the forward tile shrinks to the layout's blocks (not below 64 x 32), so
  a tile lies inside one block and is all visible or all skipped; smaller blocks, and
  the backward's 64 x 64 tiles over 16- or 32-element blocks, read the layout per
  element in the tiles whose blocks differ (templates/kernels/sparse.cuh)."""
from __future__ import annotations

from dataclasses import dataclass

SM80_SMEM_LIMIT = 163 * 1024   # opt-in dynamic shared memory per block on A100
SM90_SMEM_LIMIT = 227 * 1024   # and on H100 / H200
PAD = 8                        # elements of padding per shared row (templates/kernels/mma.cuh)
ELEMENT_BYTES = 2              # fp16 / bf16
FORWARD_WARPS = 4


@dataclass(frozen=True)
class ForwardPlan:
    block_m: int
    block_n: int
    warps: int

    @property
    def rows_per_warp(self) -> int:
        return self.block_m // self.warps

    def smem_bytes(self, d: int, dv: int) -> int:
        q = self.block_m * (d + PAD)
        kv = 2 * self.block_n * (d + PAD + dv + PAD)
        return (q + kv) * ELEMENT_BYTES


@dataclass(frozen=True)
class BackwardPlan:
    block_m: int
    block_n: int
    warps: int
    stages: int                # Q/dO buffers

    def smem_bytes(self, d: int, dv: int) -> int:
        kv = self.block_n * (d + PAD + dv + PAD)
        q_do = self.stages * self.block_m * (d + PAD + dv + PAD)
        p_ds = 2 * self.block_m * (self.block_n + PAD)
        return (kv + q_do + p_ds) * ELEMENT_BYTES


@dataclass(frozen=True)
class TilePlan:
    head_dim: int
    value_dim: int
    forward: ForwardPlan
    backward: BackwardPlan

    def describe(self) -> list[str]:
        f, b, d, dv = self.forward, self.backward, self.head_dim, self.value_dim
        return [
            f"forward:  {f.block_m} query rows x {f.block_n} keys per tile, {f.warps} warps "
            f"({f.rows_per_warp} rows each), 2 K/V stages, {f.smem_bytes(d, dv) // 1024} KiB shared memory",
            f"backward: {b.block_n} keys x {b.block_m} query rows per tile, {b.warps} warps, "
            f"{b.stages} Q/dO stage{'s' if b.stages > 1 else ''}, "
            f"{b.smem_bytes(d, dv) // 1024} KiB shared memory",
        ]


class TileError(ValueError):
    """A requested tile size the kernels cannot run."""


def check_forward_tile(tile: tuple[int, int], head_dim: int | None = None,
                       value_dim: int | None = None) -> ForwardPlan:
    """A forward tile asked for by hand (the block-size sweep: `flashgen.compile(...,
    forward_tile=(BM, BN))`), checked against what the kernel can instantiate; its shared
    memory too when the head dims are given."""
    block_m, block_n = tile
    if block_m not in (64, 128):
        raise TileError(f"forward_tile: BM must be 64 or 128 ({FORWARD_WARPS} warps of 16 or "
                        f"32 query rows), not {block_m}")
    if block_n not in (16, 32, 64, 128, 256):
        raise TileError(f"forward_tile: BN must be a power of two from 16 to 256, not {block_n}")
    plan = ForwardPlan(block_m, block_n, FORWARD_WARPS)
    smem = 0 if head_dim is None else plan.smem_bytes(head_dim, value_dim)
    if smem > SM90_SMEM_LIMIT:
        raise TileError(f"forward_tile {block_m}x{block_n} needs {smem // 1024} KiB of shared "
                        f"memory at head dim {head_dim}; the limit is {SM90_SMEM_LIMIT // 1024} KiB")
    return plan


def plan_tiles(head_dim: int, value_dim: int, blocks: tuple[int, int] | None = None,
               forward_tile: tuple[int, int] | None = None) -> TilePlan:
    """The tiles for a head dim, and for a block-sparse spec's (block_q, block_k).
    forward_tile overrides the forward pass's (BM, BN) (see check_forward_tile)."""
    widest = max(head_dim, value_dim)
    if widest <= 64:
        block_m, block_n = 128, 128
    elif widest <= 128:
        block_m, block_n = 128, 64
    elif widest <= 192:
        block_m, block_n = 64, 64
    else:
        block_m, block_n = 64, 32
    if blocks is not None:
        block_m = min(block_m, max(64, blocks[0]))
        block_n = min(block_n, max(32, blocks[1]))
    forward = ForwardPlan(block_m, block_n, FORWARD_WARPS)
    if forward_tile is not None:
        forward = check_forward_tile(forward_tile, head_dim, value_dim)
    warps = 4 if widest <= 64 else 8
    backward = BackwardPlan(64, 64, warps, 2)
    if backward.smem_bytes(head_dim, value_dim) > SM80_SMEM_LIMIT:
        backward = BackwardPlan(64, 64, warps, 1)
    plan = TilePlan(head_dim, value_dim, forward, backward)
    assert forward_tile or forward.smem_bytes(head_dim, value_dim) <= SM80_SMEM_LIMIT
    assert backward.smem_bytes(head_dim, value_dim) <= SM80_SMEM_LIMIT
    return plan


def plan_for(spec, head_dim: int, forward_tile: tuple[int, int] | None = None) -> TilePlan:
    """The tile plan of a checked spec's kernels at one head dim."""
    bs = spec.block_sparse
    return plan_tiles(head_dim, spec.value_dim_for(head_dim),
                      None if bs is None else (bs.block_q, bs.block_k), forward_tile)
