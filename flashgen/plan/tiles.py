"""Tile planning: block sizes and warps per (head dim, value dim) and arch.

The plan is written into the header comment of every generated kernel source and
printed by `flashgen explain`. Rules, from the register and shared-memory budgets:

forward -- 4 warps; each owns BM / 4 query rows (two m16 tiles at BM = 128, so each
  K/V fragment read from shared memory feeds two MMAs). Per thread the output
  accumulator takes (BM / 4) * Dv / 32 registers and a score tile (BM / 4) * BN / 32,
  which sets BN: 128 keys up to d = 64 (64 when the score reads parameter tables), 64
  up to 128; above that BM = 64 (one m16 tile
  per warp) with BN = 64, and 32 at 256. Under 255 registers per thread two CTAs of 128
  threads share an SM; shared memory (Q and two K/V stages, padded rows) is at most
  102 KiB per CTA, so two fit sm_90's 227 KiB (one fits sm_80's 163 KiB).
backward -- 8 warps; BN = 128 keys per CTA up to d = 128 (BM = 128 query rows at d <= 64,
  64 at d = 128), 64 x 64 above. dK and dV stay in registers for the whole CTA:
  BN * (D + Dv) / 256 floats per thread (128 at d = 128). 128 keys per CTA halve the
  dQ atomics and the Q/dO traffic of 64 (measured: f+b 0.47 -> 0.65x FA2 at d = 128,
  PERF.md). Q/dO are double-buffered unless two stages would not fit the arch's shared
  memory: on sm_80 (163 KiB) the 128-key tiles keep one stage, on sm_90 (227 KiB) two.
sm90 family (sm_90a, d and dv in 64/128/256) -- warpgroup MMA: the forward
  warp-specialised (ws_by_default: a TMA producer and two consumers of 64 query rows,
  three at d = 64, ws_consumers; 160 keys per tile at d = 128 and 80 at d = 256 where
  rows run long, else 128 / 64: ws_block_n), else in two warpgroups of 64 query rows,
  one per CTA and three CTAs per SM at d = 64 (_wgmma_forward); up to d = 128 the
  backward too, 128 keys in two warpgroups of 64 with 64-row Q tiles, fed by a producer
  warpgroup (TMA loads, dQ by bulk reduction; _wgmma_backward); at d = 256 64 keys, the
  two consumers splitting the head dim (_wgmma_split_backward). Every other arch and
  head dim stays mma.sync.
block-sparse -- the tiles shrink to the layout's blocks (forward not below 64 x 32,
  backward not below 64 x 64), so a tile lies inside one block and is all visible or
  all skipped; smaller blocks read the layout per element in the tiles whose blocks
  differ (templates/kernels/sparse.cuh)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..analysis.affine import affine_bias
from ..analysis.bounds import bounds, index_range
from ..analysis.derivative import differentiable_loads
from ..ir.nodes import Binary, Load

SM80_SMEM_LIMIT = 163 * 1024   # opt-in dynamic shared memory per block on A100
SM90_SMEM_LIMIT = 227 * 1024   # and on H100 / H200
DEFAULT_ARCH = "sm_90a"        # the plan `flashgen generate` writes and explain shows
PAD = 8                        # elements of padding per shared row (templates/kernels/mma.cuh)
ELEMENT_BYTES = 2              # fp16 / bf16
UNIT_CARD_BYTES = 40           # a persistent forward's unit card (forward_sm90_ws.cuh UnitCard)
FORWARD_WARPS = 4


# mma.sync (sm_80 and up), warpgroup MMA (sm_90a), and warpgroup MMA with a producer
# warpgroup feeding two or three consumers (forward_sm90_ws.cuh; the forward only), one
# Q tile per CTA or persistent (one CTA per SM looping over Q tiles)
FAMILIES = ("mma", "wgmma", "wgmma_ws", "wgmma_ws_persistent")
WS_FAMILIES = ("wgmma_ws", "wgmma_ws_persistent")
# The keys per tile the warp-specialised forward can take by hand (forward_tile): the N of
# its Q K^T, one wgmma (templates/kernels/wgmma.cuh's wgmma_ss shapes). FlashAttention-3
# runs d = 128 at 176 and d = 256 at 80; the other families take powers of two.
WS_KEY_TILES = (32, 64, 80, 96, 128, 160, 176, 192, 256)


@dataclass(frozen=True)
class ForwardPlan:
    block_m: int
    block_n: int
    warps: int
    family: str = "mma"
    kv_stages: int = 2         # wgmma: K/V stages
    producer: bool = False     # wgmma: a producer warpgroup and consumers of 64 rows (wgmma_ws)
    persistent: bool = False   # producer: one CTA per SM, looping over the Q tiles
    q_slots: int = 1           # persistent: Q buffers per consumer, loaded a unit ahead
    o_stage: bool = False      # persistent: an output buffer per consumer, stored by TMA
    general_block_n: int = 0   # producer: keys per tile of the general instance; 0: block_n
    decode_rows: int = 64      # producer: a call of at most this many query rows runs its
                               # instance with one consumer (decoding: forward.cu.j2); 0: never

    @property
    def general_keys(self) -> int:
        """Keys per tile of the forward's general instance (a packed batch, a paged cache,
        split-KV: cp.async loads), which keeps 128 (64 at d = 256) where a padded batch's
        tiles are FlashAttention-3's wider ones (ws_block_n): a tile of 128 nests in 128-
        and 256-row pages, where one of 160 spanned two and its loads took 1.8-2.5x the
        time (PERF.md, paged KV), and no call of the general instance measured faster at
        160 (split-KV decoding level)."""
        return self.general_block_n or self.block_n

    @property
    def kernel_family(self) -> str:
        """The family name (FAMILIES) that selects this kernel in a TileOverride."""
        if self.persistent:
            return "wgmma_ws_persistent"
        return "wgmma_ws" if self.producer else self.family

    @property
    def rows_per_warp(self) -> int:
        return self.block_m // self.warps

    @property
    def consumers(self) -> int:
        """The producer kernel's consumer warpgroups, 64 query rows each."""
        return self.block_m // 64

    @property
    def dq_block_m(self) -> int:
        """Query rows per CTA of the deterministic dQ kernel, which walks the forward's
        tile lists (backward.cuh dq_kernel): the forward's tile, or half of three
        consumers' 192 rows, since 12 warps would cap its registers at 168 (255 at 6)."""
        return self.block_m if self.block_m <= 128 else self.block_m // 2

    def smem_bytes(self, d: int, dv: int) -> int:
        if self.family == "wgmma":  # swizzled rows need no pad; +1024 to align them;
            barriers = 4 * self.kv_stages * 8 if self.producer else 0   # a producer's mbarriers
            q_slots = self.q_slots if self.persistent else 1  # persistent: and per Q slot and
            if self.persistent:  # consumer two mbarriers and a unit's card (and the card writer's)
                barriers += (2 * 8 + UNIT_CARD_BYTES) * (q_slots * self.consumers + 1)
            o_stage = self.block_m * dv if self.persistent and self.o_stage else 0
            return ((q_slots * self.block_m * d + self.kv_stages * self.block_n * (d + dv)
                     + o_stage) * ELEMENT_BYTES + barriers + 1024)
        q = self.block_m * (d + PAD)
        kv = 2 * self.block_n * (d + PAD + dv + PAD)
        return (q + kv) * ELEMENT_BYTES


@dataclass(frozen=True)
class BackwardPlan:
    block_m: int
    block_n: int
    warps: int
    stages: int                # Q/dO buffers
    family: str = "mma"
    producer: bool = False     # wgmma: a TMA producer warpgroup and two consumers
    split: bool = False        # producer: the consumers split the head dim (d = 256)
    fallback_stages: int = 0   # split: the mma.sync backward's Q/dO stages, which the
                               # host runs where TMA cannot address the tensors

    def smem_bytes(self, d: int, dv: int) -> int:
        if self.split:  # K, V, the Q/dO stages, two buffers of P^T and dS^T; per stage lse,
            tiles = (self.block_n * (d + dv) + self.stages * self.block_m * (d + dv)  # delta,
                     + 2 * 2 * self.block_n * self.block_m)  # the tile's note, 2 mbarriers;
            per_stage = 2 * self.block_m * 4 + 32 + 2 * 8    # K/V's mbarrier
            return tiles * ELEMENT_BYTES + self.stages * per_stage + 8 + 1024
        if self.producer:  # K, V, the Q/dO stages, two dS^T buffers, the fp32 dQ tile; per
            tiles = (self.block_n * (d + dv) + self.stages * self.block_m * (d + dv)  # stage
                     + 2 * self.block_n * self.block_m)  # lse, delta and the tile's 32-byte
            per_stage = 2 * self.block_m * 4 + 32 + 2 * 8  # note, 2 mbarriers; K/V's mbarrier
            return tiles * ELEMENT_BYTES + self.block_m * d * 4 + self.stages * per_stage + 8 + 1024
        if self.family == "wgmma":  # swizzled K, V, two Q/dO stages, dS^T, lse and delta,
            tiles = (self.block_n * (d + dv) + 2 * self.block_m * (d + dv)  # the stages'
                     + self.block_n * self.block_m)                         # TMA mbarriers
            return tiles * ELEMENT_BYTES + 2 * 2 * self.block_m * 4 + 2 * 8 + 1024
        kv = self.block_n * (d + PAD + dv + PAD)
        q_do = self.stages * self.block_m * (d + PAD + dv + PAD)
        p_ds = 2 * self.block_m * (self.block_n + PAD)
        lse_delta = self.stages * 2 * self.block_m * 4  # fp32 rows staged beside Q/dO
        return (kv + q_do + p_ds) * ELEMENT_BYTES + lse_delta


@dataclass(frozen=True)
class TilePlan:
    head_dim: int
    value_dim: int
    forward: ForwardPlan
    backward: BackwardPlan

    def describe(self) -> list[str]:
        f, b, d, dv = self.forward, self.backward, self.head_dim, self.value_dim
        how = (f"{f.warps // 4} warpgroup{'s' if f.warps > 4 else ''} of 64 rows (wgmma)"
               if f.family == "wgmma" else f"{f.warps} warps ({f.rows_per_warp} rows each)")
        if f.producer:
            how = ((f"persistent (one CTA per SM, {f.q_slots} Q slot"
                    f"{'s' if f.q_slots > 1 else ''}"
                    f"{', an output stage per consumer' if f.o_stage else ''}), "
                    if f.persistent else "")
                   + f"a producer warpgroup and {f.consumers} consumer warpgroups of 64 rows "
                     "(wgmma)")
        return [
            f"forward:  {f.block_m} query rows x {f.block_n} keys per tile, {how}, "
            f"{f.kv_stages} K/V stages, {f.smem_bytes(d, dv) // 1024} KiB shared memory"
            + (f" ({f.general_keys} keys per tile in the general instance: packed, paged, "
               "split-KV)" if f.general_keys != f.block_n else "")
            + (f"; up to {f.decode_rows} query rows (decoding) one consumer" if f.producer and f.decode_rows and f.decode_rows < f.block_m else ""),
            f"backward: {b.block_n} keys x {b.block_m} query rows per tile, "
            + ("a producer warpgroup (TMA) and 2 consumer warpgroups splitting the head dim "
               "(wgmma), " if b.split else
               "a producer warpgroup (TMA) and 2 consumer warpgroups of 64 keys (wgmma), "
               if b.producer else
               f"{b.warps // 4} warpgroup{'s' if b.warps > 4 else ''} of 64 keys (wgmma), "
               if b.family == "wgmma" else f"{b.warps} warps, ") +
            f"{b.stages} Q/dO stage{'s' if b.stages > 1 else ''}, "
            f"{b.smem_bytes(d, dv) // 1024} KiB shared memory",
        ]


class TileError(ValueError):
    """A requested tile size the kernels cannot run."""


@dataclass(frozen=True)
class TileOverride:
    """Tiles picked by hand instead of by the planner (the benchmark's block-size sweep):
    forward (BM, BN); backward (BM, BN, warps). None keeps the planner's. Under the
    wgmma family a backward tile of its shapes, (64, 64, 4) or (64, 128, 8), runs the
    sm90 backward; any other runs mma.sync."""
    forward: tuple[int, int] | None = None
    backward: tuple[int, int, int] | None = None
    family: str | None = None  # the forward's kernel family (FAMILIES); None: the arch's best

    def label(self) -> str:
        parts = [self.family] if self.family else []
        if self.forward:
            parts.append("f{}x{}".format(*self.forward))
        if self.backward:
            parts.append("b{}x{}w{}".format(*self.backward))
        return "_".join(parts)


def _nests(tile: int, block: int) -> bool:
    return tile % block == 0 or block % tile == 0


def _warp_split_fits(rows: int, cols: int, warps: int) -> bool:
    """Can `warps` warps tile a rows x cols block (templates/kernels/backward.cuh WarpSplit)?"""
    row_warps = min(rows // 16, warps)
    col_warps = warps // row_warps
    return (row_warps * col_warps == warps and (rows // 16) % row_warps == 0
            and (cols // 8) % col_warps == 0)


def check_override(tiles: TileOverride, head_dim: int | None = None,
                   value_dim: int | None = None) -> TileOverride:
    """Check hand-picked tiles against what the kernels can instantiate; their shared
    memory and warp layouts too when the head dims are given."""
    if tiles.family is not None and tiles.family not in FAMILIES:
        raise TileError(f"family must be one of {', '.join(FAMILIES)}, not {tiles.family!r}")
    if tiles.forward is not None:
        block_m, block_n = tiles.forward
        three_consumers = ws = tiles.family in WS_FAMILIES
        if block_m not in (64, 128) and not (block_m == 192 and three_consumers):
            raise TileError(f"forward_tile: BM must be 64 or 128 ({FORWARD_WARPS} warps of 16 "
                            f"or 32 query rows; 192 for three consumers of family="
                            f"wgmma_ws or wgmma_ws_persistent), "
                            f"not {block_m}")
        if ws and block_n not in WS_KEY_TILES:
            raise TileError(f"forward_tile: the {tiles.family} forward takes BN of "
                            f"{', '.join(map(str, WS_KEY_TILES))} (its Q K^T's wgmma shapes), "
                            f"not {block_n}")
        if not ws and block_n not in (16, 32, 64, 128, 256):
            raise TileError(f"forward_tile: BN must be a power of two from 16 to 256, not {block_n}")
    if tiles.backward is not None:
        block_m, block_n, warps = tiles.backward
        if block_m not in (64, 128) or block_n not in (64, 128) or warps not in (4, 8):
            raise TileError(f"backward_tile: (BM, BN, warps) takes BM and BN in (64, 128) and "
                            f"4 or 8 warps, not {tiles.backward}")
    if head_dim is None:
        return tiles
    plans = []
    if tiles.forward is not None and tiles.family in WS_FAMILIES:
        # its leanest form (_wgmma_ws_forward tries richer ones first)
        block_m, block_n = tiles.forward
        plans.append(("forward_tile", _ws_plan(block_m // 64, block_n,
                                               tiles.family == "wgmma_ws_persistent")))
    elif tiles.forward is not None:
        plans.append(("forward_tile", ForwardPlan(*tiles.forward, FORWARD_WARPS)))
    if tiles.backward is not None:
        block_m, block_n, warps = tiles.backward
        for rows, cols in ((block_m, block_n), (block_n, head_dim), (block_n, value_dim),
                           (block_m, head_dim)):
            if not _warp_split_fits(rows, cols, warps):
                raise TileError(f"backward_tile {tiles.backward}: {warps} warps cannot tile a "
                                f"{rows} x {cols} block at head dim {head_dim}")
        plans.append(("backward_tile", _backward_plan(block_m, block_n, warps, head_dim,
                                                      value_dim, SM90_SMEM_LIMIT)))
    for what, plan in plans:
        smem = plan.smem_bytes(head_dim, value_dim)
        if smem > SM90_SMEM_LIMIT:
            raise TileError(f"{what} needs {smem // 1024} KiB of shared memory at head dim "
                            f"{head_dim}; the limit is {SM90_SMEM_LIMIT // 1024} KiB")
    return tiles


def _backward_plan(block_m: int, block_n: int, warps: int, head_dim: int, value_dim: int,
                   smem_limit: int) -> BackwardPlan:
    """Q/dO double-buffered unless two stages would not fit."""
    plan = BackwardPlan(block_m, block_n, warps, 2)
    if plan.smem_bytes(head_dim, value_dim) > smem_limit:
        plan = BackwardPlan(block_m, block_n, warps, 1)
    return plan


def smem_limit(arch: str) -> int:
    """Dynamic shared memory per CTA on an arch ("sm_80", "sm_90a", ...)."""
    return SM80_SMEM_LIMIT if arch.startswith("sm_8") else SM90_SMEM_LIMIT


def plan_tiles(head_dim: int, value_dim: int, blocks: tuple[int, int] | None = None,
               override: TileOverride | None = None, arch: str = DEFAULT_ARCH,
               score_reads_tables: bool = False, affine: bool = False,
               three_consumers: bool = True, param_grads: bool = False,
               long_rows: bool = False) -> TilePlan:
    """The tiles for a head dim on an arch, and for a block-sparse spec's (block_q,
    block_k); `override` replaces them by hand-picked ones (see check_override).
    `affine`: the score adds a bias affine in kv_idx (analysis/affine.py), whose tables
    the forward reads once per row and tile; the warp-specialised consumers then hold no
    more per score than a mask's (no spill at 128 keys, d = 64), while the mma.sync
    warps, 32 rows each, still spilled 16-104 bytes at 128 keys (ALiBi fp16 d = 64,
    sm_80) and keep 64. `three_consumers`: the spec allows three consumers of the
    warp-specialised forward at d = 64 (ws_consumers). `param_grads`: the score reads
    float parameters, whose gradients build the forward's exact-P instance; `long_rows`: the
    mask reads no tables and bounds a row's keys from above only (ws_block_n)."""
    widest = max(head_dim, value_dim)
    if widest <= 64:
        # a score reading parameter tables holds more per element: at 128 keys ptxas
        # spilled 500+ bytes (temperature), at 64 none
        block_m, block_n = 128, 64 if score_reads_tables else 128
    elif widest <= 128:
        block_m, block_n = 128, 64
    elif widest <= 192:
        block_m, block_n = 64, 64
    else:
        block_m, block_n = 64, 32
    if widest <= 64:
        backward_tile = (128, 128, 8)
    elif widest <= 128:
        backward_tile = (64, 128, 8)
    else:
        backward_tile = (64, 64, 8)
    if blocks is not None:
        block_m = min(block_m, max(64, blocks[0]))
        block_n = min(block_n, max(32, blocks[1]))
        backward_tile = (min(backward_tile[0], max(64, blocks[0])),
                         min(backward_tile[1], max(64, blocks[1])), 8)
    forward = ForwardPlan(block_m, block_n, FORWARD_WARPS)
    backward = _backward_plan(*backward_tile, head_dim, value_dim, smem_limit(arch))
    assert forward.smem_bytes(head_dim, value_dim) <= SM80_SMEM_LIMIT
    assert backward.smem_bytes(head_dim, value_dim) <= smem_limit(arch)
    family = override_family = override.family if override is not None else None
    per_score_tables = score_reads_tables and not affine
    producer = family in ("wgmma_ws", "wgmma_ws_persistent")
    persistent = family == "wgmma_ws_persistent"
    if producer:
        family = "wgmma"
    if family is None:
        family = "wgmma" if wgmma_fits(arch, head_dim, value_dim) else "mma"
    elif family == "wgmma" and not wgmma_fits(arch, head_dim, value_dim):
        raise TileError(f"the wgmma family needs sm_90a and head dims of 64, 128 or 256, "
                        f"not {arch} with d = {head_dim}, dv = {value_dim}")
    if (family == "wgmma" and override_family is None
            and (override is None or override.forward is None)  # a hand-picked tile: plain
            and ws_by_default(head_dim, value_dim, blocks, per_score_tables)):
        producer = True
        persistent = persistent_by_default(widest)
    if family == "wgmma":
        forward = _wgmma_forward(head_dim, value_dim, blocks, per_score_tables)
        if producer:
            forward = _wgmma_ws_forward(head_dim, value_dim,
                                        ws_block_n(widest, blocks, param_grads, long_rows),
                                        persistent,
                                        ws_consumers(widest, blocks, persistent,
                                                     three_consumers))
            narrow = ws_block_n(widest, blocks, param_grads)
            if narrow != forward.block_n and not forward.general_block_n:  # (unless set:
                forward = replace(forward, general_block_n=narrow)  # switch_ab.py's A/B)
        if widest <= 128:
            backward = _wgmma_backward(blocks, head_dim, value_dim)
        elif head_dim in (128, 256) and value_dim in (128, 256):
            backward = _wgmma_split_backward(head_dim, value_dim, backward)
    if override is not None:
        check_override(override, head_dim, value_dim)
        if override.forward is not None:
            block_m, block_n = override.forward
            if blocks is not None and not (_nests(block_m, blocks[0]) and _nests(block_n, blocks[1])):
                # the tile lists map whole blocks to tiles or tiles to whole blocks
                # (runtime/sparse.py _tiles_along)
                raise TileError(f"forward_tile {override.forward}: a block-sparse spec's tile "
                                f"must cover whole {blocks[0]} x {blocks[1]} blocks or lie "
                                f"inside one; use a power of two for BM and BN")
            if producer:
                if block_m not in (128, 192) or block_m == 192 and widest > 64:
                    raise TileError(f"the wgmma_ws forward has consumers of 64 query rows: BM "
                                    f"is 128 (two), or 192 (three) at d = 64; not {block_m} "
                                    f"at d = {widest}")
                forward = _wgmma_ws_forward(head_dim, value_dim, block_n, persistent,
                                            block_m // 64)
            else:
                forward = ForwardPlan(block_m, block_n, block_m // 16, "wgmma") \
                    if family == "wgmma" else ForwardPlan(block_m, block_n, FORWARD_WARPS)
        if override.backward is not None:
            backward = _backward_plan(*override.backward, head_dim, value_dim, SM90_SMEM_LIMIT)
            block_m, block_n, warps = override.backward
            if (family == "wgmma" and widest <= 128 and block_m == 64
                    and warps == block_n // 16):  # the sm90 backward's shapes (_wgmma_backward)
                backward = _wgmma_backward_plan(block_n, head_dim, value_dim)
    return TilePlan(head_dim, value_dim, forward, backward)


def wgmma_fits(arch: str, head_dim: int, value_dim: int) -> bool:
    """Can the sm90 family (templates/kernels/forward_sm90.cuh) run these head dims on
    `arch`? It needs wgmma (sm_90a) and rows of whole 128-byte swizzle blocks that its
    loads and wgmma shapes cover: d and dv of 64, 128 or 256."""
    return arch.startswith("sm_90") and all(x in (64, 128, 256) for x in (head_dim, value_dim))


def ws_by_default(head_dim: int, value_dim: int, blocks: tuple[int, int] | None,
                  score_reads_tables: bool = False) -> bool:
    """Does the sm90 family's forward default to the warp-specialised kernel
    (forward_sm90_ws.cuh)? At d = 128 its forward was 1.06-1.21x the two-warpgroup CTA's
    (dense and causal, N = 2048 and 8192: PERF.md, issue 8's WS step). At d = 64 it lost to
    the one-warpgroup CTAs (0.94x dense) while its producer loaded with cp.async; with TMA
    it is 1.03-1.15x their forward and 1.00-1.03x their forward+backward (PERF.md, issue 8's
    seventh step), except where the score reads tables (t5_bias): at 128 keys its consumers
    spill 24-96 bytes, and the one-warpgroup CTA takes 64 keys. Under a block-sparse
    layout its Q tile is 128 rows (two consumers, ws_consumers), so a layout of shorter
    blocks keeps the plain kernel, whose tiles follow the blocks. A value dim other than the head dim
    keeps it too: the GPU tests run no such spec (family="wgmma_ws" still builds one).
    At d = 256 (64 keys, ws_block_n) it measured 1.3x the two-warpgroup CTA's 128 x 32
    tiles with one barrier pair per stage (same run), and K and V apart took it a further
    1.52x (465 -> 707, another run; PERF.md, issue 8's ninth step)."""
    return (head_dim == value_dim
            and (head_dim in (128, 256) or head_dim == 64 and not score_reads_tables)
            and (blocks is None or blocks[0] >= 128))


def persistent_by_default(widest: int) -> bool:
    """Does the warp-specialised forward default to the persistent kernel (one CTA per
    SM running Q tiles drawn from a counter, each unit's last P V and output store under
    the next unit's first Q K^T: forward_sm90_ws.cuh)? Up to d = 128: same process as
    the grid's kernel (bf16, H200), at d = 128 with its output stage causal 1.03x /
    1.09-1.11x (N = 8192 / 2048), dense 0.99-1.00x / 1.02-1.04x, key padding 1.04x /
    1.08x, sliding window 1.09x / 1.11-1.12x (PERF.md, issue 8's twenty-first step); at
    d = 64 1.01-1.04x, sliding window and key padding there too (twentieth step). At
    d = 256 its one Q slot beside two K/V stages measured 0.93-0.97x, so the grid stays
    there."""
    return widest <= 128


def ws_consumers(widest: int, blocks: tuple[int, int] | None, persistent: bool,
                 three: bool = True) -> int:
    """Consumer warpgroups of the warp-specialised forward: three at d = 64 (192 query
    rows; FlashAttention-3's choice there too), two above. A 128-key tile at d = 64 has
    half the GEMM work of d = 128 under the same softmax, so with two consumers in turn
    the tensor cores idle through part of each softmax (forward 0.78-0.91x cuDNN at d = 64
    with two; PERF.md, issue 8's thirteenth step). Three leave each 160 registers (24 for
    the TMA producer), which ptxas fits without spilling for the shipped masks (document: 8
    bytes). `three` is False (plan_for) where
      - the mask or score divides integers per element (`%`, `//`): dilated's consumers
        spilled 820 bytes at 160;
      - the mask reads parameter tables: its tile classes come from data (document
        boundaries), which a 192-row Q tile straddles more often than a 128-row one:
        document's forward measured 222 -> 181 TFLOP/s (N = 8192) and 94 -> 71 (N = 2048)
        with three.
    A block-sparse layout keeps two (its tiles follow blocks of at most 128 rows). The
    persistent kernel takes three too (its first design, with two, measured 0.86-1.02x
    the grid's three at d = 64: PERF.md, issue 8's twentieth step)."""
    return 3 if widest <= 64 and blocks is None and three else 2


def ws_block_n(widest: int, blocks: tuple[int, int] | None = None,
               param_grads: bool = False, long_rows: bool = False) -> int:
    """Keys per tile of the warp-specialised forward. FlashAttention-3's wider tiles, 160
    at d = 128 and 80 at d = 256, where a row's keys run long (`long_rows`: no mask, or
    one that reads no tables and bounds the keys from above only: causal, prefix-LM). A
    consumer thread's score tile takes BN / 2 registers beside O's Dv / 2, so d = 256
    stops short of 128 (128 + 64 + the previous tile's P 32 pass the 240 it has). In the
    block-size sweep (bf16, H100, PERF.md "Issue 8: wider forward tiles") 128 keys took
    1.03-1.05x the time of 160 (dense, causal; 1.04-1.06x prefix-LM and softcap at
    N = 8192, 0.97-0.98x at 2048), and 64 keys 1.03-1.07x the time of 80 at d = 256; 176
    was 0.97-1.03x of 128. Where a row's keys are few the units are short and 160 keys
    leave the second Q slot out of shared memory (the next unit's Q no longer lands
    under this one) and straddle more boundaries: 128 keys took 0.82-0.90x the time of
    160 under the document mask, 0.91-0.93x under the sliding window, 1.00-1.01x under
    key padding, so such masks keep 128 (64 at d = 256). 128 stays at d = 64 (three
    consumers, 160 registers each). A spec with float parameters' gradients keeps
    128 / 64: its exact-P instance (a second P V MMA) spilled 288 bytes at 160 (ALiBi,
    temperature; none at 128). softcap's d = 256 TMA instance spills 64 / 88 bytes at 80
    keys (none at 64) and still measured 1.03-1.06x faster there. Under a block-sparse
    layout a tile follows the layout's blocks (a power of two that nests in them, not
    below 32)."""
    if blocks is not None:
        return min(128 if widest <= 128 else 64, max(32, blocks[1]))
    if widest <= 64:
        return 128
    wide = long_rows and not param_grads
    if widest <= 128:
        return 160 if wide else 128
    return 80 if wide else 64


def _wgmma_forward(head_dim: int, value_dim: int, blocks: tuple[int, int] | None,
                   score_reads_tables: bool = False) -> ForwardPlan:
    """The sm90 forward: two warpgroups of 64 query rows (one at d = 64, with 64 keys when
    the score reads tables). Per thread the output takes
    Dv / 2 registers and a score tile BN / 2, a quarter of the mma.sync family's 32-row
    warps at the same tile, so 128 keys fit up to d = 128. Above, 32 (this kernel runs
    d = 256 only when asked for by name: the warp-specialised one takes 64 keys there,
    ws_block_n); the deterministic dQ kernel walks the forward's tile lists at the
    forward's tiles, and fits its Q, dO and two padded K/V stages in 227 KiB at d = 256
    with 32 keys, one stage with 64 (DqTiles::kStages)."""
    block_m, block_n = 128, 128 if max(head_dim, value_dim) <= 128 else 32
    if max(head_dim, value_dim) <= 64:
        # one warpgroup of 64 rows per CTA, three CTAs per SM (73 KiB of shared memory
        # each): independent CTAs fill the tensor cores during each other's softmax, where
        # a CTA's two warpgroups run in lockstep. Measured 1.12-1.31x the two-warpgroup
        # CTA's forward at d = 64; at d = 128 two CTAs of 64 x 64 tiles were 0.86-0.97x
        # (PERF.md, issue 8's third step)
        block_m = 64
        if score_reads_tables:  # ptxas spilled 56-180 B under the 168 registers at 128 keys (t5_bias)
            block_n = 64
    if blocks is not None:
        block_m = min(block_m, max(64, blocks[0]))
        block_n = min(block_n, max(32, blocks[1]))
    return ForwardPlan(block_m, block_n, block_m // 16, "wgmma")


def _ws_plan(consumers: int, block_n: int, persistent: bool, kv_stages: int = 2,
             q_slots: int = 1, o_stage: bool = False) -> ForwardPlan:
    """A warp-specialised forward: a producer warpgroup and `consumers` of 64 query rows;
    by default its leanest shared-memory form."""
    return ForwardPlan(64 * consumers, block_n, 4 * (1 + consumers), "wgmma", kv_stages, True,
                       persistent, q_slots, o_stage)


def _wgmma_ws_forward(head_dim: int, value_dim: int, block_n: int,
                      persistent: bool = False, consumers: int = 2) -> ForwardPlan:
    """The warp-specialised forward (forward_sm90_ws.cuh): a producer warpgroup and two
    or three consumers of 64 query rows, as many K/V stages as fit (up to 4; 3 at d = 128,
    224 KiB): a stage is released only after its P V, so two stages leave the producer one
    softmax's time to refill one. Persistent, first an output stage per consumer where
    it fits with two consumers (d = 128: two K/V stages with split barriers, two Q slots
    and the stages, 224 KiB), then the most stages and two Q slots where they fit beside
    them (d = 64: the next unit's Q rows land while this one runs), else one (d = 256),
    which the producer refills as soon as a consumer's last Q K^T of a unit is done.
    At d = 128 the output stage (the unit's O by TMA stores, not from the fragments) with
    the Q rows a unit ahead measured, forward against three stages and one slot in the
    same call: causal +1.3 % / +5.6 % (N = 8192 / 2048: 623 -> 631, 496 -> 524), dense
    -0.6-1.5 % / +2 %, key padding +2 % / +6 %, sliding window +12 % / +11 %,
    where two slots alone had been 1.5-3 % slower (PERF.md, issue 8's twentieth and
    twenty-first steps). Three consumers (d = 64) keep their 160 registers: the stage
    had raised softcap's spills there, and a buffered store had measured level."""
    for o_stage in ((True, False) if persistent and consumers == 2 else (False,)):
        for stages in (4, 3, 2):
            for q_slots in ((2, 1) if persistent else (1,)):
                plan = _ws_plan(consumers, block_n, persistent, stages, q_slots, o_stage)
                if plan.smem_bytes(head_dim, value_dim) <= SM90_SMEM_LIMIT:
                    return plan
    raise TileError(f"the wgmma_ws forward does not fit shared memory at d = {head_dim}")


def _wgmma_backward(blocks: tuple[int, int] | None, head_dim: int, value_dim: int) -> BackwardPlan:
    """The sm90 backward (templates/kernels/backward_sm90.cuh): 128 keys per CTA in two
    warpgroups of 64, whose dK and dV take D / 2 + Dv / 2 registers per thread (128 at
    d = 128); Q tiles of 64 rows, the M of the dQ wgmma each warpgroup runs over all
    of them. A block-sparse layout with blocks under 128 keys takes 64 (one warpgroup)."""
    return _wgmma_backward_plan(128 if blocks is None or blocks[1] >= 128 else 64, head_dim,
                                value_dim)


def _wgmma_backward_plan(block_n: int, head_dim: int, value_dim: int) -> BackwardPlan:
    """128 keys: warp-specialised (backward_sm90_ws.cuh), a TMA producer warpgroup and the
    two warpgroups of 64 keys as its consumers, three Q/dO stages where they fit (at d =
    128 with 344 bytes to spare; measured 0-3 % faster than two, PERF.md, issue 8's
    eleventh step); `warps` counts the consumers' (dQ's layout). The
    host runs backward_sm90.cuh's CTA where TMA cannot address the tensors (a packed batch).
    64 keys: that CTA, one warpgroup."""
    if block_n != 128:
        return BackwardPlan(64, block_n, block_n // 16, 2, "wgmma")
    for stages in (3, 2):
        plan = BackwardPlan(64, block_n, block_n // 16, stages, "wgmma", producer=True)
        if plan.smem_bytes(head_dim, value_dim) <= SM90_SMEM_LIMIT:
            return plan
    raise TileError(f"the sm90 backward does not fit shared memory at d = {head_dim}")


def _wgmma_split_backward(head_dim: int, value_dim: int, fallback: BackwardPlan) -> BackwardPlan:
    """The sm90 backward at d = 256 (templates/kernels/backward_sm90_split.cuh): 64 keys x
    64 query rows per tile, a TMA producer warpgroup and two consumers that split the
    head dim, each holding half of the 64 keys' dK and dV (64 + 64 registers per thread
    at d = 256, where the 64-key consumers of d <= 128 would need 256) and making half of
    each tile's dQ; two Q/dO stages (224 KiB with K, V and two P^T / dS^T buffers). Where
    TMA cannot address the tensors the host runs the mma.sync backward, `fallback`."""
    plan = BackwardPlan(64, 64, 8, 2, "wgmma", producer=True, split=True,
                        fallback_stages=fallback.stages)
    if plan.smem_bytes(head_dim, value_dim) > SM90_SMEM_LIMIT:
        raise TileError(f"the sm90 backward does not fit shared memory at d = {head_dim}")
    return plan


def plan_for(spec, head_dim: int, override: TileOverride | None = None,
             arch: str = DEFAULT_ARCH) -> TilePlan:
    """The tile plan of a checked spec's kernels at one head dim, on an arch."""
    bs = spec.block_sparse
    score_reads_tables = spec.score is not None and any(
        isinstance(node, Load) for e in (spec.score, *(let.expr for let in spec.lets))
        for node in e.walk())
    lets = [let.expr for let in spec.lets]
    divides = any(isinstance(node, Binary) and node.op in ("mod", "floordiv")
                  for e in (spec.mask, spec.score, *lets) if e is not None for node in e.walk())
    mask_reads_tables = any(isinstance(node, Load) for e in (spec.mask, *lets) if e is not None
                            for node in e.walk())
    param_grads = bool(differentiable_loads(spec))
    keys = index_range(spec, "kv_idx")
    long_rows = not mask_reads_tables and (keys is None or all(
        bound.lower is None for bound in bounds(keys)))
    return plan_tiles(head_dim, spec.value_dim_for(head_dim),
                      None if bs is None else (bs.block_q, bs.block_k), override, arch,
                      score_reads_tables, affine_bias(spec) is not None,
                      not divides and not mask_reads_tables, param_grads, long_rows)
