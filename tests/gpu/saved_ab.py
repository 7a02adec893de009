"""A/B of what a forward pass keeps for the backward (launch.SAVE_*: nothing, O in fp32,
O in fp32 with P unrounded), in one process on one GPU; PERF.md step 11.

    PYTHONPATH=$PWD python tests/gpu/saved_ab.py
"""
import statistics, torch, flashgen
import flashgen.api as api
from flashgen.runtime import launch

def timed(fn, reps=20):
    for _ in range(3): fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return statistics.median(ts)

B, H, N, d = 2, 16, 8192, 128
rows = []
orig = api._saved_for_backward
for spec in ("causal", "alibi"):
    op = flashgen.compile(spec)
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    params = {}
    if spec == "alibi":
        params["slopes"] = (2.0 ** (-8 * torch.arange(1, H + 1, device="cuda") / H)).requires_grad_()
    modes = [launch.SAVE_NOTHING, launch.SAVE_F32_OUT] + ([launch.SAVE_EXACT_F32_OUT] if params else [])
    for mode in modes:
        api._saved_for_backward = lambda *a, m=mode: m
        def fwd(): return op(q, k, v, **params)
        def fb():
            op(q, k, v, **params).backward(dout)
        tf = timed(fwd)
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
        q.grad = k.grad = v.grad = None
        tfb = timed(fb)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append((spec, mode, tf, tfb, peak))
api._saved_for_backward = orig
# FlashAttention-2 (SDPA's flash backend) in the same process: an anchor for comparing runs
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F
with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
    def fa2(): return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    def fa2_fb(): fa2().backward(dout)
    rows.append(("FA2 causal", -1, timed(fa2), timed(fa2_fb), float("nan")))
print(f"{'spec':8s} {'saved':>5s} {'fwd ms':>8s} {'f+b ms':>8s} {'f+b peak MiB':>12s}")
for spec, mode, tf, tfb, peak in rows:
    print(f"{spec:8s} {mode:5d} {tf:8.3f} {tfb:8.3f} {peak:12.0f}")
