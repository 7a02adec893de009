"""Two consumers (128-row units, the output stage) at d = 64 before their A/B: the forward of
causal, dense and sliding window against PyTorch's SDPA in float64, beside the error of SDPA run in
bf16 (the suite's rule: ours within 2x of that). Outputs poisoned (NaN) before the call."""
import dataclasses

import torch
import torch.nn.functional as F

import flashgen
from flashgen.plan import tiles

planner = tiles._wgmma_ws_forward


def two_consumers(*args, **kwargs):
    plan = planner(*args, **kwargs)
    if plan.block_m == 192:
        plan = dataclasses.replace(plan, block_m=128, warps=12, o_stage=True)
    return plan


tiles._wgmma_ws_forward = two_consumers
torch.manual_seed(0)
bad = 0
for name in ("causal", "dense", "sliding_window"):
    op = flashgen.compile(name)
    for n in (1000, 2048, 4096):
        q, k, v = (torch.randn(2, 8, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        mask = None
        if name == "sliding_window":
            i = torch.arange(n, device="cuda")
            mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 1024)
        causal = name == "causal"
        ref = F.scaled_dot_product_attention(*(t.double() for t in (q, k, v)), attn_mask=mask,
                                             is_causal=causal)
        low = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        out = op(q, k, v)
        torch.cuda.synchronize()
        err, bound = ((out.double() - ref).abs().max().item(),
                      2 * (low.double() - ref).abs().max().item())
        ok = err <= bound and out.isfinite().all().item()
        bad += not ok
        print(f"{name} d=64 N={n}: max |out - ref| {err:.3e}, 2x bf16 SDPA's {bound:.3e} "
              f"{'ok' if ok else 'FAILED'}", flush=True)
print(f"two consumers at d = 64: {'all ok' if not bad else f'{bad} FAILED'}")
