"""Philox4x32-10 (Salmon et al., SC'11), vectorised in torch, and the dropout bit layout.

The dropout mask of a spec is a pure function of (seed, offset, b, h, q_idx, kv_idx),
so the kernels (forward and backward, any tile size) and the reference draw the
same bits. The layout, which templates/kernels/dropout.cuh implements too:

    key     = (seed & 0xffffffff, seed >> 32)                    # 64-bit seed
    counter = (kv_idx >> 1,                                       # c0: a pair of columns
               ((q_idx >> 4) << 3) | (q_idx & 7),                 # c1: rows r and r+8 of a
                                                                  #     16-row group share it
               b * Hq + h,                                        # c2: the query head
               offset)                                            # c3: per call, 32-bit
    word    = ((q_idx >> 3) & 1) * 2 + (kv_idx & 1)               # which of the 4 outputs
    keep    = out[word] >= threshold(p),  threshold(p) = min(floor(p * 2^32), 2^32 - 1)

One Philox call thus covers the 2x2 elements (rows r, r+8; columns 2c, 2c+1) that one
thread holds in an m16n8 tensor-core accumulator fragment, so a kernel calls it once
per fragment. Kept values are scaled by 1 / (1 - p). The comparison is on integers,
so kernel and reference agree bit for bit."""
from __future__ import annotations

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57        # multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85        # key schedule (golden ratio, sqrt(3) - 1)
MASK32 = 0xFFFFFFFF
ROUNDS = 10


def _mulhilo(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of m * x for uint32 values held in int64 tensors.

    m * x can reach 2^64, past int64; split m into 16-bit halves so every partial
    product stays below 2^49."""
    m_hi, m_lo = m >> 16, m & 0xFFFF
    p_hi = x * m_hi                     # < 2^48
    p_lo = x * m_lo                     # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = ((p_hi << 16) + p_lo) & MASK32
    return hi & MASK32, lo


def philox4x32_10(counter, key) -> tuple[torch.Tensor, ...]:
    """Four uint32 outputs (int64 tensors) for uint32 counters (4 tensors or ints) and key (2)."""
    device = next((c.device for c in counter if isinstance(c, torch.Tensor)), None)
    c0, c1, c2, c3 = torch.broadcast_tensors(
        *[torch.as_tensor(c, dtype=torch.int64, device=device) for c in counter])
    k0, k1 = int(key[0]) & MASK32, int(key[1]) & MASK32
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox4x32_10_scalar(counter, key) -> tuple[int, int, int, int]:
    """The same function on Python ints, written from the paper's round (for the tests)."""
    c = [int(x) & MASK32 for x in counter]
    k = [int(x) & MASK32 for x in key]
    for r in range(ROUNDS):
        if r:
            k = [(k[0] + W0) & MASK32, (k[1] + W1) & MASK32]
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & MASK32, (p0 >> 32) ^ c[3] ^ k[1], p0 & MASK32]
    return tuple(c)


def threshold(p: float) -> int:
    """The uint32 below which a draw is dropped: P(drop) = threshold / 2^32 ~= p."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {p}")
    return min(int(p * 2.0**32), MASK32)


def keep_mask(seed: int, offset: int, p: float, batch: int, heads: int, nq: int, nk: int,
              device=None, first_batch: int = 0, frame=None) -> torch.Tensor:
    """bool [batch, heads, nq, nk]: True where dropout keeps the element. first_batch: the
    batch index of entry 0 (a packed sequence drawn alone keeps its own stream); frame
    (runtime.arguments.Frame): the rows are a shard, drawn at their global indices."""
    t = threshold(p)
    device = torch.device(device or "cpu")
    if t == 0:
        return torch.ones(batch, heads, nq, nk, dtype=torch.bool, device=device)
    key = (seed & MASK32, (seed >> 32) & MASK32)
    q_first, kv_first = (frame.q_first, frame.kv_first) if frame is not None else (0, 0)
    q = torch.arange(q_first, q_first + nq, dtype=torch.int64, device=device).view(nq, 1)
    k = torch.arange(kv_first, kv_first + nk, dtype=torch.int64, device=device).view(1, nk)
    c0, c1 = k >> 1, ((q >> 4) << 3) | (q & 7)
    word = ((q >> 3) & 1) * 2 + (k & 1)
    out = torch.empty(batch, heads, nq, nk, dtype=torch.bool, device=device)
    for b in range(batch):           # one head at a time keeps the int64 temporaries small
        for h in range(heads):
            words = philox4x32_10((c0, c1, (first_batch + b) * heads + h, offset & MASK32), key)
            drawn = torch.where(word == 0, words[0], torch.where(
                word == 1, words[1], torch.where(word == 2, words[2], words[3])))
            out[b, h] = drawn >= t
    return out


def resolve_seed(seed, device) -> tuple[int, int]:
    """(seed, offset) for a call: an int pins the seed (offset 0); a pair gives both;
    None takes them from torch's generator of the device and advances it, so that
    torch.manual_seed reproduces a run."""
    if seed is None:
        device = torch.device(device)
        if device.type == "cuda":
            gen = torch.cuda.default_generators[device.index if device.index is not None
                                                else torch.cuda.current_device()]
            offset = gen.get_offset()
            gen.set_offset(offset + 4)       # CUDA generator offsets move in steps of 4
            return gen.initial_seed() & 0xFFFFFFFFFFFFFFFF, (offset // 4) & MASK32
        drawn = torch.randint(0, 2**62, (2,), dtype=torch.int64)
        return int(drawn[0]), int(drawn[1]) & MASK32
    if isinstance(seed, (tuple, list)):
        s, o = seed
        return int(s) & 0xFFFFFFFFFFFFFFFF, int(o) & MASK32
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, a (seed, offset) pair or None, got {seed!r}")
    return int(seed) & 0xFFFFFFFFFFFFFFFF, 0
