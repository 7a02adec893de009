"""Random valid specs for differential fuzzing: the language's features in random
combinations, each with a random call (dtype, head dim, shape, dropout, backward mode).

`random_case(seed)` is a pure function of the seed, so a failing case is reproduced by
its number (`python tests/gpu/fuzz.py --seed N --count 1 --show`). The specs are written
as text and go through the parser and checker like a user's.

What a spec may contain:
- mask: built-in masks (causal, windows, prefix-LM, key padding, documents, dilation)
  and comparisons of integer expressions over q_idx, kv_idx, b, h, q_len, kv_len,
  scalar and table parameters, joined by &&, || and !, or none;
- score: zero to two `score =` lines over score, float parameters and tables (learned
  slopes, temperature, bucketed bias), integer distances, tanh / sigmoid / exp / abs,
  if-then-else, and -inf (a score can hide a key);
- lets, a fixed scale, dropout, a block-sparse pattern or runtime layout, a value dim
  other than the head dim.

Expressions are kept finite where the reference is finite (exp of bounded arguments,
divisions by 1 + |x|), since the oracle treats NaN in a kernel's output as a failure;
overflowing and NaN-producing inputs have their own tests (tests/gpu/test_numerics.py)."""
from __future__ import annotations

import random
from dataclasses import dataclass

DTYPES = ("fp16", "bf16")
# weights: the common head dims most, every supported one sometimes
HEAD_DIMS = ((64, 6), (128, 4), (32, 3), (16, 2), (96, 1), (256, 1), (192, 1))


@dataclass(frozen=True)
class FuzzCase:
    seed: int
    text: str            # the spec, as a user would write it
    dtype: str
    head_dim: int
    B: int
    Hq: int
    Hkv: int
    Nq: int
    Nk: int
    dropout_p: float
    deterministic: bool

    @property
    def name(self) -> str:
        return f"fuzz_{self.seed}"

    def describe(self) -> str:
        return (f"seed {self.seed}: {self.dtype} d{self.head_dim} B{self.B} H{self.Hq}:{self.Hkv} "
                f"{self.Nq}x{self.Nk}" + (f" p={self.dropout_p}" if self.dropout_p else "")
                + (" deterministic" if self.deterministic else ""))


class _SpecWriter:
    """Draws one spec. Parameters are declared when an expression first uses them."""

    def __init__(self, rng: random.Random, square: bool):
        self.rng = rng
        self.square = square      # Nq == Nk: tables over N may be used
        self.params: dict[str, str] = {}   # name -> declaration text
        self.lets: list[str] = []

    def param(self, name: str, decl: str) -> str:
        self.params.setdefault(name, decl)
        return name

    def pick(self, *options):
        return self.rng.choice(options)

    def small(self, lo=1, hi=64) -> str:
        return str(self.rng.randint(lo, hi))

    # ---- integers

    def int_atom(self) -> str:
        r = self.rng.random()
        if r < 0.45:
            return self.pick("q_idx", "kv_idx", "q_idx", "kv_idx", "h", "b", "q_len", "kv_len")
        if r < 0.7:
            return self.small(0, 300)
        if r < 0.8:
            return self.param("w", f"param w: i32 = {self.small(1, 200)}")
        if r < 0.9:
            return f"{self.param('per_head', 'param per_head: i32[H]')}[h]"
        if self.square:
            return f"{self.param('ids', 'param ids: i32[B, N]')}[b, {self.pick('q_idx', 'kv_idx')}]"
        return f"{self.param('lengths', 'param lengths: i32[B]')}[b]"

    def int_expr(self, depth: int) -> str:
        if depth == 0 or self.rng.random() < 0.3:
            return self.int_atom()
        a, b = self.int_expr(depth - 1), self.int_expr(depth - 1)
        form = self.rng.randrange(7)
        if form < 3:
            return f"({a} {self.pick('+', '-', '-', '*')} {b})"
        if form == 3:
            return f"({a} {self.pick('//', '%')} {self.small(1, 9)})"
        if form == 4:
            return f"{self.pick('min', 'max')}({a}, {b})"
        if form == 5:
            return f"abs({a})"
        return f"clamp({a}, {self.small(0, 50)}, {self.small(60, 400)})"

    # ---- booleans (masks)

    def mask_atom(self) -> str:
        r = self.rng.randrange(14)
        if r == 0:
            return "causal()"
        if r == 1:
            return "causal_bottom_right()"
        if r == 2:
            width = self.small(1, 300) if self.rng.random() < 0.5 else \
                self.param("w", f"param w: i32 = {self.small(1, 200)}")
            return f"sliding_window({width})"
        if r == 3:
            return f"local_window({self.small(0, 100)}, {self.small(0, 100)})"
        if r == 4:
            return f"prefix_lm({self.small(0, 200)})"
        if r == 5:
            return f"key_padding({self.param('lengths', 'param lengths: i32[B]')})"
        if r == 6 and self.square:
            return f"document({self.param('ids', 'param ids: i32[B, N]')})"
        if r == 7:
            return f"dilated_window({self.small(1, 40)}, {self.small(1, 4)})"
        if r == 8:
            return f"{self.param('flags', 'param flags: bool[H]')}[h]"
        if r == 9:
            return f"(q_idx + kv_idx) % {self.small(2, 5)} != 0"
        op = self.pick("<", "<=", ">", ">=", "==", "!=")
        return f"{self.int_expr(2)} {op} {self.int_expr(2)}"

    def mask_expr(self, depth: int) -> str:
        if depth == 0 or self.rng.random() < 0.35:
            return self.mask_atom()
        form = self.rng.randrange(5)
        if form < 2:
            return f"({self.mask_expr(depth - 1)} && {self.mask_expr(depth - 1)})"
        if form < 4:
            return f"({self.mask_expr(depth - 1)} || {self.mask_expr(depth - 1)})"
        return f"!({self.mask_expr(depth - 1)})"

    # ---- floats (score changes)

    def float_term(self, depth: int) -> str:
        """A bounded float that does not read `score`."""
        r = self.rng.randrange(9)
        if r == 0:
            return f"{self.param('slopes', 'param slopes: f32[H]')}[h] * ({self.int_expr(1)})"
        if r == 1:
            return (f"{self.param('bias', 'param bias: f32[H, 16]')}"
                    f"[h, clamp({self.int_expr(1)}, 0, 15)]")
        if r == 2:
            return f"{self.param('c', f'param c: f32 = {self.rng.uniform(0.2, 3):.2f}')}"
        if r == 3:
            return f"{self.rng.uniform(-2, 2):.3f}"
        if r == 4:
            return f"0.01 * ({self.int_expr(2)})"
        if r == 5:
            return f"tanh(0.05 * ({self.int_expr(1)}))"
        if r == 6 and depth > 0:
            return f"sigmoid({self.float_term(depth - 1)})"
        if r == 7 and self.square:
            return (f"{self.param('pair', 'param pair: f32[H, N, N]')}"
                    f"[h, q_idx, kv_idx]")
        return f"exp(-abs({self.float_term(max(depth - 1, 0))}))"

    def score_expr(self, depth: int) -> str:
        """A float that reads `score` (the last one written)."""
        if depth == 0:
            return "score"
        inner = self.score_expr(depth - 1)
        form = self.rng.randrange(9)
        if form < 3:
            return f"{inner} + {self.float_term(1)}"
        if form == 3:
            t = self.param("inv_temp", "param inv_temp: f32[H]")
            return f"({inner}) * (0.5 + {t}[h])"
        if form == 4:
            cap = self.pick("30.0", "5.0", self.param("cap", "param cap: f32 = 20.0"))
            return f"{cap} * tanh(({inner}) / {cap})"
        if form == 5:
            return f"if {self.mask_atom()} then {inner} else {inner} - {self.rng.uniform(0, 3):.2f}"
        if form == 6:
            return f"if {self.mask_atom()} then {inner} else -inf"
        if form == 7:
            return f"({inner}) * {self.rng.uniform(0.3, 2):.2f}"
        return f"({inner}) / (1.0 + abs({self.float_term(0)}))"


def random_case(seed: int) -> FuzzCase:
    rng = random.Random(seed)
    square = rng.random() < 0.5
    w = _SpecWriter(rng, square)
    lines = []
    dtype = rng.choice(DTYPES)
    head_dim = rng.choices([d for d, _ in HEAD_DIMS], [n for _, n in HEAD_DIMS])[0]
    lines.append(f"head_dim = {head_dim}")
    lines.append(f"dtype = {dtype}")
    if rng.random() < 0.1:
        lines.append(f"value_dim = {rng.choice([d for d, _ in HEAD_DIMS if d != head_dim])}")
    if rng.random() < 0.15:
        lines.append(f"scale = {rng.uniform(0.02, 0.3):.3f}")
    body = []
    if rng.random() < 0.15:   # a let used by the mask
        w.lets.append(f"let dist = {w.int_expr(1)}")
    if rng.random() < 0.85:
        mask = w.mask_expr(rng.randrange(4))
        if w.lets and rng.random() < 0.7:
            mask = f"({mask}) || dist < {w.small(0, 20)}"
        body.append(f"mask = {mask}")
        if rng.random() < 0.1:
            body.append(f"mask = {w.mask_atom()}")   # a second mask line: both must hold
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        body.append(f"score = {w.score_expr(rng.randint(1, 3))}")
    dropout = rng.random() < 0.2
    if dropout:
        body.append("dropout")
    if rng.random() < 0.2:
        block = rng.choice([16, 32, 64, 128])
        block_k = rng.choice([block, block, 16, 32, 64, 128])
        size = f"block_q = {block}, block_k = {block_k}"
        body.append(rng.choice([
            f"block_sparse = layout({size})",
            f"block_sparse = butterfly({size})",
            f"block_sparse = strided({size}, stride = {rng.randint(1, 4)})",
            (f"block_sparse = bigbird({size}, window = {rng.randint(0, 2)}, global = "
             f"{rng.randint(0, 1)}, random = {rng.randint(0, 3)}, seed = {rng.randint(0, 99)})")]))
    text = "\n".join([f"attention fuzz_{seed} {{", *(f"  {x}" for x in lines),
                      *(f"  {p}" for p in w.params.values()), *(f"  {x}" for x in w.lets),
                      *(f"  {x}" for x in body), "}"])
    Hkv = rng.choice([1, 1, 2, 3])
    Hq = Hkv * rng.choice([1, 1, 2, 4])
    Nq = rng.choice([1, 17, 64, 100, 128, 200, 255, 300, 513, 700])
    Nk = Nq if square else rng.choice([1, 16, 64, 129, 200, 256, 400, 600, 1000])
    return FuzzCase(seed, text, dtype, head_dim, B=rng.choice([1, 2]), Hq=Hq, Hkv=Hkv, Nq=Nq,
                    Nk=Nk, dropout_p=rng.choice([0.0, 0.1, 0.5]) if dropout else 0.0,
                    deterministic=rng.random() < 0.15)
