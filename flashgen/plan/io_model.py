"""The IO model of the FlashAttention paper (Dao et al. 2022, Sec. 3.2), for our kernels.

Standard attention materialises the N x N scores S and probabilities P in HBM:
Theta(Nd + N^2) bytes per head. Counted here for the textbook implementation (the
paper's Algorithms 0 and 3): forward reads Q, K, writes S, reads S, writes P, reads P
and V, writes O; backward reads P and dO, writes dV; reads dO and V, writes dP; reads P
and dP, writes dS; reads dS and K, writes dQ; reads dS and Q, writes dK.

The tiled kernels' traffic is counted from the actual tile plan and tile map: forward
reads each Q tile once and K, V once per visited (Q tile, KV tile) pair, and writes O
and lse once; backward (flashgen/runtime/launch.py) computes delta from O and dO, reads
K, V once per KV tile and Q, dO, lse, delta per visited pair, adds into an fp32 dQ
(read-modify-write per visited pair), writes dK, dV, then scales and converts dQ. The
paper's bound for this is Theta(N^2 d^2 / M) for SRAM of M elements (times s, the
fraction of tile pairs visited, for block-sparse), printed beside the count.

A predicted time per pass is the roofline max(bytes / copy bandwidth, FLOPs / matmul
rate), FLOPs counted over the visited tiles (2 (d + dv) per score element forward,
2 (3d + 2dv) backward: the FlashAttention convention of 4 N^2 d and 2.5x that). On a GPU
the ceilings can be measured (measure_ceilings) and the call timed (measure_call)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .tile_map import TileGrid, TileMap
from .tiles import TilePlan

FP32_BYTES = 4
WIDTH = 100           # of explain's lines


@dataclass(frozen=True)
class Ceilings:
    """The roofline's two ceilings."""
    bandwidth: float       # bytes/s that a large device-to-device copy moves (read + write)
    matmul: float          # FLOP/s of a large dense fp16/bf16 matmul
    source: str

    def describe(self) -> str:
        return (f"{self.bandwidth / 1e12:.2f} TB/s copy, {self.matmul / 1e12:.0f} TFLOP/s "
                f"matmul ({self.source})")


H100_SXM = Ceilings(3.35e12, 989e12, "H100 SXM datasheet: HBM3, dense bf16")


@dataclass(frozen=True)
class Traffic:
    """HBM bytes of one pass, by what moves."""
    parts: tuple[tuple[str, float], ...]

    @property
    def total(self) -> float:
        return sum(size for _, size in self.parts)

    def describe(self, head: str, indent: int) -> list[str]:
        """`head`, then the parts ("what bytes; ..."), in lines of at most WIDTH characters,
        the later ones indented by `indent`; a part is never split."""
        lines = [head]
        for n, (what, size) in enumerate(self.parts):
            part = f"{what} {_bytes(size)}"
            if n and len(lines[-1]) + 2 + len(part) > WIDTH:
                lines.append(" " * indent + part)
            else:
                lines[-1] += ("; " if n else "") + part
        return lines


@dataclass(frozen=True)
class PassModel:
    name: str
    standard: Traffic
    tiled: Traffic
    bound: float           # bytes: Theta(N^2 d^2 / M) * s, constant factors dropped
    sram: int              # M: bytes of shared memory per CTA
    visited: float         # s: fraction of tile pairs visited
    flops: float           # matmul FLOPs of the visited tiles
    useful: float          # fraction of the visited tiles' elements that are visible

    def seconds(self, ceilings: Ceilings) -> tuple[float, float]:
        """(memory time, compute time) at the ceilings; the prediction is the larger."""
        return self.tiled.total / ceilings.bandwidth, self.flops / ceilings.matmul

    def predicted(self, ceilings: Ceilings) -> float:
        return max(self.seconds(ceilings))


@dataclass(frozen=True)
class IOModel:
    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    value_dim: int
    forward: PassModel
    backward: PassModel

    def predicted(self, ceilings: Ceilings) -> float:
        """Forward plus backward, seconds: the passes are separate kernels."""
        return self.forward.predicted(ceilings) + self.backward.predicted(ceilings)

    def describe(self, ceilings: Ceilings) -> list[str]:
        lines = []
        for p in (self.forward, self.backward):
            memory, compute = p.seconds(ceilings)
            limit = (f"memory-bound (compute {_ms(compute)})" if memory >= compute
                     else f"compute-bound (memory {_ms(memory)})")
            ratio = p.standard.total / p.tiled.total
            than_standard = f"{ratio:.3g}x less" if ratio >= 1 else f"{1 / ratio:.3g}x more"
            lines += p.standard.describe(f"{p.name:9s} standard {_bytes(p.standard.total)} = ", 21)
            lines += p.tiled.describe(f"{'':9s} tiled    {_bytes(p.tiled.total)} "
                                      f"({than_standard}) = ", 21)
            lines += [
                (f"{'':9s} Θ(N²d²/M)·s {_bytes(p.bound)} (M = {p.sram // 1024} KiB shared memory "
                 f"per CTA, s = {100 * p.visited:.1f} % of pairs visited)"),
                (f"{'':9s} {p.flops / 1e12:.3g} TFLOP (visited tiles, {100 * p.useful:.0f} % "
                 f"visible) -> {_ms(max(memory, compute))}, {limit}"),
            ]
        lines.append(f"{'fwd+bwd':9s} predicted {_ms(self.predicted(ceilings))}")
        return lines


def _rows_per_tile(length: int, block: int, tiles: int) -> torch.Tensor:
    """Rows each tile loads: `block`, fewer in a last tile that reaches past the end."""
    return (length - torch.arange(tiles) * block).clamp(max=block)


@dataclass(frozen=True)
class _Visits:
    """A pass's visited tile pairs over every (batch, head) of the call."""
    pairs: int
    q_rows: int            # Q tile rows loaded, summed over the visited pairs
    kv_rows: int           # KV tile rows loaded, summed over the visited pairs
    fraction: float        # of all tile pairs


def _visits(grid: TileGrid, tiles: TileMap) -> _Visits:
    # the grid covers tiles.batches x tiles.grid_heads of the call's (batch, head)s
    # (the ones the mask tells apart); each stands for `copies` of them
    call = tiles.batch * tiles.heads
    copies = call // (tiles.batches * tiles.grid_heads)
    visited = grid.visited()
    q_rows = visited.sum((0, 1, 3)) * _rows_per_tile(tiles.q_len, grid.block_m, grid.q_tiles)
    kv_rows = visited.sum((0, 1, 2)) * _rows_per_tile(tiles.kv_len, grid.block_n, grid.kv_tiles)
    pairs = int(visited.sum()) * copies
    return _Visits(pairs, int(q_rows.sum()) * copies, int(kv_rows.sum()) * copies,
                   pairs / (call * grid.q_tiles * grid.kv_tiles))


def io_model(plan: TilePlan, tiles: TileMap, element_bytes: int = 2) -> IOModel:
    """The IO model of one call: tiles.batch x tiles.heads heads (as many K/V heads), at
    the plan's tile sizes, `element_bytes` per element of Q, K, V, O and their gradients."""
    bh, nq, nk = tiles.batch * tiles.heads, tiles.q_len, tiles.kv_len
    d, dv, E = plan.head_dim, plan.value_dim, element_bytes
    visible = tiles.visible[0] * bh * nq * nk       # visible elements of the call

    def bound(sram: int, visited: float) -> float:
        # N^2 d^2 / M elements per head, M = the SRAM in elements
        return bh * nq * nk * d * d / (sram / E) * E * visited

    def useful(v: _Visits, tile_area: int) -> float:
        return visible / (v.pairs * tile_area) if v.pairs else 0.0

    f, b = plan.forward, plan.backward
    v = _visits(tiles.grid(f.block_m, f.block_n), tiles)
    sram = f.smem_bytes(d, dv)
    forward = PassModel(
        "forward",
        Traffic((("Q, K, V read, O written", bh * ((nq + nk) * d + (nk + nq) * dv) * E),
                 ("S written, read", bh * 2 * nq * nk * E),
                 ("P written, read", bh * 2 * nq * nk * E))),
        Traffic((("Q once per Q tile", bh * nq * d * E),
                 ("K, V per visited pair", v.kv_rows * (d + dv) * E),
                 ("O, lse written", bh * nq * (dv * E + FP32_BYTES)))),
        bound=bound(sram, v.fraction), sram=sram, visited=v.fraction,
        flops=v.pairs * f.block_m * f.block_n * 2 * (d + dv),
        useful=useful(v, f.block_m * f.block_n))
    v = _visits(tiles.grid(b.block_m, b.block_n), tiles)
    sram = b.smem_bytes(d, dv)
    backward = PassModel(
        "backward",
        Traffic((("Q, K, V, dO read, dQ, dK, dV written", bh * 2 * (nq + nk) * (d + dv) * E),
                 ("P read twice", bh * 2 * nq * nk * E),
                 ("dP written, read", bh * 2 * nq * nk * E),
                 ("dS written, read twice", bh * 3 * nq * nk * E))),
        Traffic((("O, dO read, delta written", bh * nq * (2 * dv * E + FP32_BYTES)),
                 ("dQ fp32 zeroed", bh * nq * d * FP32_BYTES),
                 ("K, V once per KV tile", bh * nk * (d + dv) * E),
                 ("Q, dO, lse, delta per visited pair",
                  v.q_rows * ((d + dv) * E + 2 * FP32_BYTES)),
                 ("dQ fp32 read+write per visited pair", v.q_rows * d * 2 * FP32_BYTES),
                 ("dK, dV written", bh * nk * (d + dv) * E),
                 ("dQ scaled, converted", bh * nq * d * (3 * FP32_BYTES + E)))),
        bound=bound(sram, v.fraction), sram=sram, visited=v.fraction,
        flops=v.pairs * b.block_m * b.block_n * 2 * (3 * d + 2 * dv),
        useful=useful(v, b.block_m * b.block_n))
    return IOModel(tiles.batch, tiles.heads, nq, nk, d, dv, forward, backward)


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


COPY_BYTES = 1 << 30       # the copy that measures bandwidth: far beyond any L2
MATMUL_SIZE = 8192         # the matmul that measures the tensor-core rate: 8192^3, bf16


def measure_ceilings() -> Ceilings:
    """Both ceilings, measured on the current GPU: a device-to-device copy_ of 1 GiB
    (bytes read plus bytes written) and an 8192^3 bf16 matmul."""
    from ..bench.timing import time_ms
    source = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    copy_ms = time_ms(lambda: target.copy_(source)).median_ms
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device="cuda", dtype=torch.bfloat16)
            for _ in range(2))
    out = torch.empty_like(a)
    matmul_ms = time_ms(lambda: torch.matmul(a, b, out=out)).median_ms
    return Ceilings(2 * COPY_BYTES / (copy_ms * 1e-3), 2 * MATMUL_SIZE ** 3 / (matmul_ms * 1e-3),
                    f"measured on {torch.cuda.get_device_name()}")


MEASURE_DROPOUT_P = 0.1    # a dropout spec is timed with dropout (the model leaves it out)


def measure_call(op, tiles: TileMap, dtype: torch.dtype, head_dim: int) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of `op` on the GPU at the tile map's call:
    random q, k, v, its parameters and layout; medians of CUDA-event timings after
    warm-up, each run starting with a cold L2 (flashgen/bench/timing.py)."""
    from ..bench.timing import time_ms
    spec = op.spec
    B, H, nq, nk = tiles.batch, tiles.heads, tiles.q_len, tiles.kv_len

    def randn(n, dim):
        return torch.randn(B, H, n, dim, device="cuda", dtype=dtype, requires_grad=True)
    q, k, v = randn(nq, head_dim), randn(nk, head_dim), randn(nk, spec.value_dim_for(head_dim))
    kwargs = {name: value.cuda() if isinstance(value, torch.Tensor) else value
              for name, value in tiles.params.items()}
    if spec.block_sparse is not None and spec.block_sparse.pattern == "layout":
        kwargs["layout"] = tiles.layout.cuda()
    if spec.dropout:
        kwargs.update(dropout_p=MEASURE_DROPOUT_P, seed=0)
    with torch.no_grad():
        forward_ms = time_ms(lambda: op(q, k, v, **kwargs)).median_ms
    grad_out = torch.randn_like(op(q, k, v, **kwargs))

    def forward_backward():
        torch.autograd.grad(op(q, k, v, **kwargs), (q, k, v), grad_out)
    return forward_ms, time_ms(forward_backward).median_ms
