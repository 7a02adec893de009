"""A/B of a switch of switch_ab.py (the warp-specialised forward's plan, another tree's
headers) on a paged KV cache (op.paged) and on the contiguous call of the same shape, in
one process on one GPU, the two positions interleaved over rounds (switch_ab's round order).

    PYTHONPATH=$PWD python tests/gpu/paged_ab.py plan --fields block_n=128,q_slots=2,o_stage=0
    PYTHONPATH=$PWD python tests/gpu/paged_ab.py header --other OLD_TREE/templates

Shapes: prefill (B = 2, H = 16, Nq = Nk = 4096) and decoding (B = 8, H = 16, Nq = 1 and 16,
Nk = 32768; --shapes batch: B = 64, Nk = 4096, unsplit), d = 128 (--d), bf16, pages of --pages rows shuffled in the pool (--order). Not a test: the
perf notes' tool for the cost of a tile that spans pages (the per-row page lookup) against
one that nests in a page.
"""
from __future__ import annotations

import argparse
import statistics

import torch

import flashgen
from flashgen.bench.timing import time_ms

try:
    from .switch_ab import SWITCHES, round_order
except ImportError:   # run as a script
    from switch_ab import SWITCHES, round_order

SHAPES = [("prefill", 2, 4096, 4096), ("decode", 8, 1, 32768), ("decode", 8, 16, 32768),
          # a batch of B * H >= the SMs, which decodes without splitting the keys
          ("batch", 64, 1, 4096), ("batch", 64, 16, 4096)]


def paged_inputs(B: int, H: int, nq: int, nk: int, d: int, page: int, gen: torch.Generator,
                 shuffled: bool = True):
    """q, k_cache, v_cache, block_table, kv_lens: every entry nk rows, its pages shuffled in
    the pool (or in order: the same lookups without the scatter)."""
    per = -(-nk // page)
    order = (torch.randperm(B * per, generator=gen) if shuffled
             else torch.arange(B * per)).to(torch.int32)
    q = torch.randn(B, H, nq, d, generator=gen).to(torch.bfloat16).cuda()
    k = torch.randn(B * per, page, H, d, generator=gen).to(torch.bfloat16).cuda()
    v = torch.randn_like(k)
    return q, k, v, order.view(B, per).cuda(), torch.full((B,), nk, dtype=torch.int32).cuda()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("switch", choices=["plan", "header"])
    ap.add_argument("--fields", default="block_n=128,q_slots=2,o_stage=0",
                    help="plan: the warp-specialised forward's plan fields in A")
    ap.add_argument("--other", default="", help="header: a templates/ folder (A)")
    ap.add_argument("--header", default="expr.cuh")
    ap.add_argument("--specs", default="dense,causal_bottom_right")
    ap.add_argument("--pages", default="256,128")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--order", choices=["shuffled", "sorted"], default="shuffled",
                    help="the pages' places in the pool")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--shapes", default="prefill,decode")
    ap.add_argument("--packed", action="store_true",
                    help="also the same rows as a packed batch (op.varlen: the general instance "
                         "without pages, which a change to the paged loads must leave alone)")
    args = ap.parse_args(argv)
    settings, restore = SWITCHES[args.switch](args)
    H, d = 16, args.d
    gen = torch.Generator().manual_seed(0)
    rows = []
    try:
        for spec in args.specs.split(","):
            op = flashgen.compile(spec)
            for name, B, nq, nk in [s for s in SHAPES if s[0] in args.shapes.split(",")]:
                for page in [int(p) for p in args.pages.split(",")]:
                    q, k, v, table, lens = paged_inputs(B, H, nq, nk, d, page, gen,
                                                             args.order == "shuffled")
                    calls = {"paged": lambda: op.paged(q, k, v, table, lens)}
                    if page == int(args.pages.split(",")[0]):   # once per shape
                        kc = k.view(B, -1, H, d)[:, :nk].transpose(1, 2).contiguous()
                        vc = v.view(B, -1, H, d)[:, :nk].transpose(1, 2).contiguous()
                        calls["contiguous"] = lambda kc=kc, vc=vc: op(q, kc, vc)
                        if args.packed:
                            qp, kp, vp = (t.transpose(1, 2).reshape(-1, H, d) for t in (q, kc, vc))
                            cq = torch.arange(B + 1, dtype=torch.int32, device="cuda") * nq
                            ck = torch.arange(B + 1, dtype=torch.int32, device="cuda") * nk
                            calls["packed"] = lambda qp=qp, kp=kp, vp=vp, cq=cq, ck=ck: op.varlen(
                                qp, kp, vp, cq, ck, max_seqlen_q=nq, max_seqlen_k=nk)
                    for what, fn in calls.items():
                        times = {label: [] for label in settings}
                        with torch.no_grad():
                            for r in range(args.rounds):
                                for label, put in round_order(settings, r):
                                    put()
                                    times[label].append(time_ms(fn, warmup=3, reps=30).median_ms)
                        a, b = (statistics.median(t) for t in times.values())
                        label = f"{spec} {name} B={B} Nq={nq} Nk={nk} " + (
                            f"page={page}" if what == "paged" else what)
                        rows.append((label, a, b))
                        print(label, round(a, 4), round(b, 4), flush=True)
                    del q, k, v, table, lens, calls
                    torch.cuda.empty_cache()
    finally:
        restore()
    a_label, b_label = list(settings)[:2]
    print(f"\nforward ms, A = {a_label!r}, B = {b_label!r}")
    print(f"{'case':58s} {'A ms':>8s} {'B ms':>8s} {'B/A-1':>7s}")
    for label, a, b in rows:
        print(f"{label:58s} {a:8.4f} {b:8.4f} {b / a - 1:+7.1%}")


if __name__ == "__main__":
    main()
