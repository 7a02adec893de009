"""An independent, element-by-element implementation of a spec's attention, for tests.

It shares nothing with flashgen.reference: scores, masks and softmax are computed one
element at a time in Python floats with the IR's scalar interpreter, dropout from the
README's description of the Philox layout with the scalar Philox."""
from __future__ import annotations

import math

import torch

from flashgen.ir.interpret import evaluate
from flashgen.reference.philox import philox4x32_10_scalar


def _tensor_reader(t: torch.Tensor):
    values = t.tolist()
    shape = tuple(t.shape)

    def read(index):
        v = values
        for axis, i in enumerate(index):
            v = v[min(max(int(i), 0), shape[axis] - 1)]
        if isinstance(v, bool):
            return v
        return float(v) if t.is_floating_point() else int(v)
    return read


def keep_bit(seed, offset, p, Hq, b, h, q, k) -> bool:
    """README: counter (k >> 1, ((q >> 4) << 3) | (q & 7), b * Hq + h, offset), word
    ((q >> 3) & 1) * 2 + (k & 1), kept when the word >= floor(p * 2^32)."""
    words = philox4x32_10_scalar((k >> 1, ((q >> 4) << 3) | (q & 7), b * Hq + h, offset),
                                 (seed & 0xFFFFFFFF, seed >> 32))
    return words[((q >> 3) & 1) * 2 + (k & 1)] >= min(int(p * 2**32), 2**32 - 1)


def attention(spec, q, k, v, *, scale=None, dropout_p=0.0, seed=0, layout=None, **params):
    """(out, lse) as nested float lists [B][H][Nq][dv] and [B][H][Nq]."""
    B, Hq, Nq, d = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    dv = v.shape[-1]
    scale = scale if scale is not None else (spec.scale if spec.scale is not None else 1 / math.sqrt(d))
    Q, K, V = q.double().tolist(), k.double().tolist(), v.double().tolist()
    env = {}
    for p in spec.params:
        value = params.get(p.name, p.default)
        env[p.name] = _tensor_reader(value) if isinstance(value, torch.Tensor) else value
    lets = {let.name: let.expr for let in spec.lets}
    bs = spec.block_sparse
    if bs is not None and layout is None:
        from flashgen.reference.patterns import fixed_layout
        layout = fixed_layout(bs, Nq, Nk)
    L = layout.tolist() if layout is not None else None
    out = [[[[0.0] * dv for _ in range(Nq)] for _ in range(Hq)] for _ in range(B)]
    lse = [[[0.0] * Nq for _ in range(Hq)] for _ in range(B)]
    for b in range(B):
        for h in range(Hq):
            hk = h // (Hq // Hkv)
            for i in range(Nq):
                row = []
                for j in range(Nk):
                    s = scale * sum(x * y for x, y in zip(Q[b][h][i], K[b][hk][j]))
                    at = dict(env, b=b, h=h, q_idx=i, kv_idx=j, q_len=Nq, kv_len=Nk, score=s)
                    if spec.score is not None:
                        s = evaluate(spec.score, at, lets)
                    visible = spec.mask is None or evaluate(spec.mask, at, lets)
                    if L is not None:
                        visible = visible and L[h if len(L) > 1 else 0][i // bs.block_q][j // bs.block_k]
                    row.append(s if visible else -math.inf)
                m = max(row)
                if m == -math.inf:
                    lse[b][h][i] = -math.inf
                    continue
                e = [math.exp(s - m) for s in row]
                total = sum(e)
                lse[b][h][i] = math.log(total) + m
                for j in range(Nk):
                    p = e[j] / total
                    if dropout_p > 0:
                        p = p / (1 - dropout_p) if keep_bit(seed, 0, dropout_p, Hq, b, h, i, j) else 0.0
                    for c in range(dv):
                        out[b][h][i][c] += p * V[b][hk][j][c]
    return out, lse
