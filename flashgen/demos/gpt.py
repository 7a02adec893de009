"""Train a small GPT twice, with a flashgen spec and with PyTorch's SDPA, and compare.

    python -m flashgen.demos.gpt --out gpt_run           # on a GPU: a few minutes
    python -m flashgen.demos.gpt --device cpu --steps 20 --layers 2 --embed 128 --seq 128

Both models are the same network from the same initial weights, trained on the same
batches of a character-level corpus that this file generates (a seeded toy grammar of
sentences with numbers, lists and quotes, so there is structure to learn). The attention
is ALiBi over a causal sliding window: the flashgen model runs the spec below through
flashgen.nn (its kernels on a GPU, its reference on the CPU); the SDPA model passes the
same bias and window as a materialised additive mask, the only way SDPA can express
them. Writes DIR/loss.png (both loss curves), DIR/results.json (losses, seconds,
tokens/s) and prints a table; the curves should lie on each other, and the tokens/s
show what the fused kernel is worth."""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..nn import MultiheadAttention, alibi_slopes

SPEC = """
# ALiBi over a causal sliding window: what the demo GPT attends with.
attention gpt_alibi_window {
  head_dim = 64, 128
  param slopes: f32[H]
  param window: i32 = 256
  mask  = sliding_window(window)
  score = score + slopes[h] * (kv_idx - q_idx)
}
"""

# ---- the corpus

_NOUNS = "cat dog bird river stone kernel tile warp block engine lamp city garden".split()
_VERBS = "sees finds builds moves counts follows keeps writes reads opens".split()
_ADJS = "small red quiet fast old bright green exact long warm".split()


def corpus(chars: int, seed: int = 0) -> str:
    """`chars` characters of generated text: sentences, counted lists and quoted speech."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < chars:
        kind = rng.random()
        if kind < 0.6:
            text = (f"the {rng.choice(_ADJS)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} "
                    f"the {rng.choice(_NOUNS)}.")
        elif kind < 0.85:
            start, n = rng.randint(1, 50), rng.randint(3, 6)
            text = "count: " + ", ".join(str(start + i) for i in range(n)) + "."
        else:
            noun = rng.choice(_NOUNS)
            text = f'the {noun} said "{rng.choice(_VERBS)} the {rng.choice(_ADJS)} {noun}".'
        parts.append(text)
        size += len(text) + 1
    return "\n".join(parts)[:chars]


# ---- the model

class SdpaAttention(nn.Module):
    """flashgen.nn.MultiheadAttention's projections around torch's SDPA, with ALiBi and
    the window as an additive [H, N, N] mask (same parameter names: weights copy over)."""

    def __init__(self, embed_dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads, self.head_dim, self.window = num_heads, embed_dim // num_heads, window
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.register_buffer("slopes", alibi_slopes(num_heads))

    def forward(self, x):
        B, N, E = x.shape
        q, k, v = (proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        i = torch.arange(N, device=x.device)
        distance = (i[None, :] - i[:, None]).float()                 # kv_idx - q_idx
        visible = (distance <= 0) & (distance > -self.window)
        bias = self.slopes.float()[:, None, None] * distance
        mask = bias.masked_fill(~visible, float("-inf")).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, E))


class Block(nn.Module):
    def __init__(self, attention: nn.Module, embed_dim: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.attention = attention
        self.mlp = nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.GELU(),
                                 nn.Linear(4 * embed_dim, embed_dim))

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token embedding (ALiBi needs no positions), blocks, final norm, tied LM head."""

    def __init__(self, vocab: int, layers: int, embed_dim: int, heads: int, window: int,
                 backend: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        nn.init.normal_(self.embed.weight, std=0.02)     # GPT-2's: tied logits start small

        def attention():
            if backend == "sdpa":
                return SdpaAttention(embed_dim, heads, window)
            return MultiheadAttention(SPEC, embed_dim, heads,
                                      params={"slopes": alibi_slopes(heads), "window": window})
        self.blocks = nn.ModuleList(Block(attention(), embed_dim) for _ in range(layers))
        self.ln = nn.LayerNorm(embed_dim)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.embed.weight.T


# ---- training

def models(args, vocab: int) -> dict[str, GPT]:
    """The two models, with the same initial weights (flashgen.nn keeps the spec's tables
    one level down: attention.attention.slopes)."""
    torch.manual_seed(args.seed)
    made = {b: GPT(vocab, args.layers, args.embed, args.heads, args.window, b)
            for b in ("flashgen", "sdpa")}
    made["sdpa"].load_state_dict({k.replace("attention.attention.", "attention."): v
                                  for k, v in made["flashgen"].state_dict().items()})
    return {b: m.to(args.device) for b, m in made.items()}


def train(backend: str, model: GPT, args, text_ids: torch.Tensor, vocab: int) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    batches = torch.Generator().manual_seed(args.seed + 1)
    amp = args.device.startswith("cuda") and args.dtype != "float32"
    dtype = getattr(torch, args.dtype)
    losses, seconds = [], 0.0
    for step in range(args.steps):
        starts = torch.randint(0, len(text_ids) - args.seq - 1, (args.batch,), generator=batches)
        chunk = torch.stack([text_ids[s:s + args.seq + 1] for s in starts]).to(args.device)
        _sync(args.device)
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            logits = model(chunk[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, vocab), chunk[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # GPT-2's clipping and a linear warm-up: without them a bf16 run at this rate
        # spiked now and then (0.33 -> 1.06 at one step), in either model, which says
        # nothing about the attention
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        optimizer.step()
        _sync(args.device)
        if step >= min(3, args.steps - 1):       # the first steps compile and warm up
            seconds += time.perf_counter() - t
        losses.append(loss.item())
        if args.log_every and (step % args.log_every == 0 or step == args.steps - 1):
            print(f"{backend:8s} step {step:5d}  loss {loss.item():.4f}", flush=True)
    timed_steps = args.steps - min(3, args.steps - 1)
    return {"losses": losses, "seconds": seconds,
                   "tokens_per_s": timed_steps * args.batch * args.seq / max(seconds, 1e-9)}


GAP_WINDOW = 10


def curve_gap(a: list[float], b: list[float]) -> float:
    """The largest difference of the two loss curves, each averaged over windows of
    GAP_WINDOW steps: two bf16 runs round differently, so single steps' losses scatter by
    more than the curves move apart."""
    gaps = [abs(sum(a[i:i + GAP_WINDOW]) - sum(b[i:i + GAP_WINDOW])) / len(a[i:i + GAP_WINDOW])
            for i in range(0, min(len(a), len(b)), GAP_WINDOW)]
    return max(gaps, default=0.0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"flashgen": {"lw": 2.5, "alpha": 0.6}, "sdpa": {"lw": 1, "ls": "--"}}
    for backend, r in results.items():
        ax.plot(r["losses"], label=f"{backend} ({r['tokens_per_s']:,.0f} tokens/s)",
                **styles[backend])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / char)")
    ax.set_title("GPT with ALiBi + sliding window: flashgen vs SDPA")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashgen.demos.gpt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--embed", type=int, default=512)
    p.add_argument("--heads", type=int, default=8, help="head dim = embed / heads (64 or 128)")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50, help="steps of linear learning-rate warm-up")
    p.add_argument("--chars", type=int, default=2_000_000, help="size of the generated corpus")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="autocast dtype on CUDA (the CPU runs float32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", default="gpt_run", help="folder for loss.png and results.json")
    args = p.parse_args(argv)
    text = corpus(args.chars, args.seed)
    alphabet = sorted(set(text))
    ids = torch.tensor([alphabet.index(c) for c in text], dtype=torch.long)
    print(f"corpus: {len(text):,} characters, {len(alphabet)} symbols; "
          f"{args.layers} layers x {args.heads} heads x {args.embed // args.heads} dims, "
          f"{args.seq} tokens, window {args.window}, {args.device}")
    results = {backend: train(backend, model, args, ids, len(alphabet))
               for backend, model in models(args, len(alphabet)).items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        plot(results, out / "loss.png")
    except ImportError:
        print("no matplotlib: no loss.png (pip install matplotlib)")
    (out / "results.json").write_text(json.dumps({"args": vars(args), **results}, indent=1))
    gap = curve_gap(results["flashgen"]["losses"], results["sdpa"]["losses"])
    print(f"\n{'backend':10s} {'final loss':>10s} {'tokens/s':>12s}")
    for backend, r in results.items():
        print(f"{backend:10s} {r['losses'][-1]:10.4f} {r['tokens_per_s']:12,.0f}")
    speedup = results["flashgen"]["tokens_per_s"] / results["sdpa"]["tokens_per_s"]
    print(f"largest gap between the curves (means of {GAP_WINDOW} steps): {gap:.4f}; "
          f"flashgen / SDPA speed: "
          f"{speedup:.2f}x; {out / 'loss.png'}")
    return 0 if math.isfinite(gap) else 1


if __name__ == "__main__":
    raise SystemExit(main())
