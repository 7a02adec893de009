"""flashgen.nn on the CPU (the layers run the spec's reference there): parameters as
buffers or learnable nn.Parameters, projections and GQA, dropout by training mode, and
the errors a wrong construction gets."""
import pytest
import torch

import flashgen
from flashgen.nn import MultiheadAttention, SpecAttention, alibi_slopes


def test_spec_attention_holds_tables_as_buffers_or_parameters():
    layer = SpecAttention("alibi", params={"slopes": alibi_slopes(4)})
    assert "slopes" in dict(layer.named_buffers()) and not list(layer.parameters())
    assert torch.equal(layer.state_dict()["slopes"], alibi_slopes(4))
    learned = SpecAttention("alibi", params={"slopes": alibi_slopes(4)}, learnable=["slopes"])
    assert [n for n, _ in learned.named_parameters()] == ["slopes"]
    q, k, v = (torch.randn(2, 4, 9, 64, dtype=torch.float64) for _ in range(3))
    out = learned(q, k, v)
    ref = flashgen.compile("alibi").reference(q, k, v, slopes=alibi_slopes(4))
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    assert learned.slopes.grad is not None and learned.slopes.grad.abs().sum() > 0
    assert "spec=alibi" in repr(learned) and "tensors=[slopes]" in repr(learned)


def test_a_learnable_table_starts_at_zeros_and_trains():
    layer = SpecAttention("t5_bias", num_heads=2, learnable=["bias"])
    assert layer.bias.shape == (2, 32) and not layer.bias.any()
    q, k, v = (torch.randn(1, 2, 16, 64) for _ in range(3))
    target = torch.randn(1, 2, 16, 64)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = (layer(q, k, v) - target).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert layer.bias.any() and losses[-1] < losses[0]


def test_per_call_parameters():
    """A table that changes per batch (document ids) is passed to forward()."""
    layer = SpecAttention("document")
    q, k, v = (torch.randn(2, 2, 12, 64, dtype=torch.float64) for _ in range(3))
    doc = torch.tensor([[0] * 5 + [1] * 7, [0] * 12], dtype=torch.int32)
    with pytest.raises(Exception, match="missing parameter 'doc'"):
        layer(q, k, v)
    torch.testing.assert_close(layer(q, k, v, doc=doc),
                               flashgen.compile("document").reference(q, k, v, doc=doc))


def test_multihead_attention_projects_groups_heads_and_matches_the_reference():
    torch.manual_seed(0)
    layer = MultiheadAttention("causal", embed_dim=256, num_heads=4, num_kv_heads=2,
                               dtype=torch.float64)
    x = torch.randn(2, 10, 256, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 10, 256)
    q = layer.q_proj(x).view(2, 10, 4, 64).transpose(1, 2)
    k = layer.k_proj(x).view(2, 10, 2, 64).transpose(1, 2)
    v = layer.v_proj(x).view(2, 10, 2, 64).transpose(1, 2)
    ref = flashgen.compile("causal").reference(q, k, v)
    torch.testing.assert_close(y, layer.out_proj(ref.transpose(1, 2).reshape(2, 10, 256)))
    y.sum().backward()
    assert x.grad is not None and layer.q_proj.weight.grad is not None
    # cross-attention: keys and values from a context of another length and width
    cross = MultiheadAttention("dense", embed_dim=128, num_heads=2, kv_dim=96)
    assert cross(torch.randn(1, 5, 128), context=torch.randn(1, 7, 96)).shape == (1, 5, 128)


def test_dropout_only_in_training_mode():
    layer = SpecAttention("dropout_causal", dropout=0.5)
    q, k, v = (torch.randn(1, 2, 16, 64, dtype=torch.float64) for _ in range(3))
    ref = flashgen.compile("dropout_causal").reference(q, k, v)
    assert not torch.allclose(layer(q, k, v, seed=3), ref)
    layer.eval()
    torch.testing.assert_close(layer(q, k, v), ref)


def test_construction_errors_name_the_fix():
    with pytest.raises(ValueError, match="has no parameter 'slope'; its parameters: slopes"):
        SpecAttention("alibi", params={"slope": alibi_slopes(4)})
    with pytest.raises(ValueError, match="needs an initial value .* or num_heads=..."):
        SpecAttention("alibi", learnable=["slopes"])
    with pytest.raises(ValueError, match="has no dropout"):
        SpecAttention("causal", dropout=0.1)
    with pytest.raises(ValueError, match="head dim 512 // 4 = 128 is not one of 't5_bias''s"):
        MultiheadAttention("t5_bias", embed_dim=512, num_heads=4)
    with pytest.raises(ValueError, match="num_heads 4 is not a multiple of num_kv_heads 3"):
        MultiheadAttention("causal", embed_dim=256, num_heads=4, num_kv_heads=3)
