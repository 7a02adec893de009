"""flashgen.nn on the GPU: a MultiheadAttention layer with learned ALiBi slopes runs the
kernels, and its output and gradients (input, projection weight, slopes) match the same
layer in float64 on the CPU (the reference) within the oracle's bound: twice the error of
the layer run in the input dtype."""
import copy

import pytest
import torch

from flashgen.nn import MultiheadAttention, alibi_slopes

from .oracle import bound, error

pytestmark = pytest.mark.gpu


def _run(layer, x):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.double().square().sum().backward()
    return {"out": y, "dx": x.grad, "dq_proj": layer.q_proj.weight.grad,
            "dslopes": layer.attention.slopes.grad}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_multihead_layer_matches_its_reference(dtype):
    torch.manual_seed(0)
    layer = MultiheadAttention("alibi", embed_dim=512, num_heads=8, num_kv_heads=4,
                               params={"slopes": alibi_slopes(8)}, learnable=["slopes"])
    x = torch.randn(2, 300, 512)
    ref = _run(copy.deepcopy(layer).double(), x.double())
    low = _run(copy.deepcopy(layer).to(dtype), x.to(dtype))
    got = _run(copy.deepcopy(layer).to("cuda", dtype), x.to("cuda", dtype))
    for what in ref:
        assert torch.isfinite(got[what]).all(), what
        assert error(got[what].cpu(), ref[what]) <= bound(low[what], ref[what]), what
