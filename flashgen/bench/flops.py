"""The FLOP convention of the FlashAttention papers, which the peers' numbers use.

Forward: 4 * B * H * Nq * Nk * d (two matmuls of 2 * Nq * Nk * d each; with a V head dim
dv: 2 * B * H * Nq * Nk * (d + dv)), counted over the visible pairs only (half for
causal, the layout's density for block-sparse). Backward: 2.5x forward (five matmuls to
the forward's two); forward + backward: 3.5x. Dropout does not change the count."""
from __future__ import annotations

DIRECTIONS = ("fwd", "fwd+bwd")
_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def attention_flops(B: int, H: int, Nq: int, Nk: int, d: int, dv: int, visible_fraction: float,
                    direction: str) -> float:
    """The work of one call in `direction` ("fwd", "bwd" or "fwd+bwd")."""
    forward = 2.0 * B * H * Nq * Nk * (d + dv) * visible_fraction
    return forward * _FACTOR[direction]


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12
