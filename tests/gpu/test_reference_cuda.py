"""The reference on a CUDA device: same results as on the CPU; dropout seeds from the
CUDA generator, reproducible with torch.manual_seed."""
import pytest
import torch

import flashgen
from flashgen.runtime.examples import example_inputs

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["alibi", "document", "t5_bias", "butterfly_causal", "dropout_causal"])
def test_reference_on_cuda_equals_cpu(name):
    op = flashgen.compile(name)
    gen = torch.Generator().manual_seed(0)
    q, k, v, params, layout = example_inputs(op.spec, B=2, Hq=4, Hkv=2, Nq=300, Nk=300,
                                             generator=gen)
    extra = {"dropout_p": 0.2, "seed": (11, 3)} if op.spec.dropout else {}
    cpu = op.reference(q, k, v, layout=layout, **extra, **params)
    cuda = op.reference(q.cuda(), k.cuda(), v.cuda(),
                        layout=None if layout is None else layout.cuda(), **extra,
                        **{n: (p.cuda() if isinstance(p, torch.Tensor) else p)
                           for n, p in params.items()})
    torch.testing.assert_close(cuda.cpu(), cpu)


def test_dropout_seed_from_the_cuda_generator():
    op = flashgen.compile("dropout_causal")
    q, k, v = (torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.float64) for _ in range(3))
    torch.manual_seed(5)
    a = op.reference(q, k, v, dropout_p=0.3)
    b = op.reference(q, k, v, dropout_p=0.3)
    torch.manual_seed(5)
    c = op.reference(q, k, v, dropout_p=0.3)
    assert torch.equal(a, c) and not torch.equal(a, b)
