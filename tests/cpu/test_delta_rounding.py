"""Why dq / dk / dv may take delta = rowsum(dO * O) from O in the input dtype, and why
dropout may not (launch.SAVE_*; PERF.md, issue 8's twenty-fourth step).

The backward kernels form dS = P * (dP - delta). With delta from O rounded to fp16/bf16
that is the exact dS plus P * g per row, g = rowsum(dO * (O - round(O))), and P * g is
what a gradient g on lse adds (d lse / d s = P). So the float64 reference, given that lse
gradient, is the kernel's arithmetic with only delta's rounding as error: it must stay
well inside the GPU oracle's bound (tests/gpu/oracle.py), leaving the rest of the bound
to the kernels' own fp32 and MMA rounding."""
import pytest
import torch

import flashgen
from flashgen.runtime.examples import example_inputs

from ..gpu import oracle

GRADS = ("dq", "dk", "dv")


def _grads(op, q, k, v, dout, params, lse_grad=None, dtype=None, **call):
    q, k, v = (t.detach().to(dtype or t.dtype).requires_grad_() for t in (q, k, v))
    out, lse = op.reference(q, k, v, return_lse=True, dtype=dtype, **call, **params)
    loss = (out.double() * dout.double()).sum()
    if lse_grad is not None:
        loss = loss + (torch.where(torch.isfinite(lse), lse, 0).double() * lse_grad).sum()
    loss.backward()
    return out.detach(), {"dq": q.grad, "dk": k.grad, "dv": v.grad}


def _delta_rounding_error(name, dtype, seed, **shape):
    """max over dq, dk, dv of (the error delta's rounding makes) / (the oracle's bound)."""
    op = flashgen.compile(name)
    gen = torch.Generator().manual_seed(seed)
    q, k, v, params, layout = example_inputs(op.spec, generator=gen, **shape)
    call = {"layout": layout} if layout is not None else {}
    if op.spec.dropout:
        call.update(dropout_p=0.25, seed=seed)
    # the oracle's inputs: what the kernel sees, rounded to the input dtype
    q, k, v = (t.to(dtype).double() for t in (q, k, v))
    dout = torch.randn(*q.shape[:-1], v.shape[-1], generator=gen, dtype=torch.float64)
    dout = dout.to(dtype).double()
    out64, exact = _grads(op, q, k, v, dout, params, **call)
    _, low = _grads(op, q, k, v, dout, params, dtype=dtype, **call)
    g = (dout * (out64 - out64.to(dtype).double())).sum(-1)
    _, emulated = _grads(op, q, k, v, dout, params, lse_grad=g, **call)
    return max(oracle.error(emulated[n], exact[n]) / oracle.bound(low[n], exact[n])
               for n in GRADS)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["causal", "sliding_window", "document", "softcap", "dense"])
def test_delta_from_rounded_out_stays_inside_the_bound(name, dtype):
    worst = max(_delta_rounding_error(name, dtype, seed, B=2, Hq=4, Hkv=2, Nq=96, Nk=96)
                for seed in range(3))
    assert worst < 0.5, f"{name}: delta's rounding alone takes {worst:.2f} of the bound"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_one_key_rows_are_exact_without_dropout(dtype):
    """A row with one visible key has O = v, which the input dtype holds exactly."""
    assert _delta_rounding_error("causal", dtype, 0, B=1, Hq=2, Hkv=2, Nq=1, Nk=1) == 0.0


def test_one_key_rows_under_dropout_need_out_in_fp32():
    """O = v / (1 - p) rounds while the exact dS is 0: the oracle leaves only its floor,
    and delta from a rounded O misses it many times over (hence SAVE_F32_OUT)."""
    assert _delta_rounding_error("dropout_causal", torch.bfloat16, 0,
                                 B=1, Hq=2, Hkv=2, Nq=1, Nk=1) > 2.0
