"""A first look at the dQ tile tickets before the tests: causal and dense d = 128 / 64 backward,
dq against PyTorch's SDPA in float64 (and the passes' dq), the tickets on and off."""
import torch
import torch.nn.functional as F
import flashgen
from flashgen.runtime import launch

torch.manual_seed(0)
for name, causal in (("causal", True), ("dense", False)):
    op = flashgen.compile(name)
    for d, n in ((128, 1000), (64, 2048), (128, 4096)):
        q, k, v = (torch.randn(2, 4, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        dout = torch.randn(2, 4, n, d, device="cuda", dtype=torch.bfloat16)
        ref = F.scaled_dot_product_attention(*(t.double() for t in (q, k, v)), is_causal=causal)
        gq = torch.autograd.grad(ref, q, dout.double())[0]
        errs = {}
        for tickets in (True, False):
            launch.TILE_TICKETS = tickets
            out = op(q, k, v)
            dq = torch.autograd.grad(out, q, dout)[0]
            torch.cuda.synchronize()
            errs[tickets] = (dq.double() - gq).abs().max().item()
        print(f"{name} d={d} N={n}: max |dq - ref| tickets {errs[True]:.3e} passes {errs[False]:.3e}",
              flush=True)
