"""Packed variable-length batches (op.varlen, FlashAttention-2's varlen layout) against the
reference run one sequence at a time (op.reference_varlen): masks that read q_len / kv_len
(bottom-right causal), tables sized by the longest sequence, a block pattern cut short,
dropout drawn per sequence, GQA, split-KV, the deterministic backward, an empty query
sequence, and sequences shorter than one tile."""
import pytest
import torch

import flashgen

from .oracle import compare

pytestmark = pytest.mark.gpu

CASES = [
    # spec, dtype, d, Hq, Hkv, query lengths, key lengths, call options
    ("causal", "bf16", 64, 4, 2, [1, 100, 257, 64, 0, 130], None, {}),
    ("causal_bottom_right", "fp16", 128, 2, 1, [3, 1, 16], [300, 1000, 50], {}),
    ("causal_bottom_right", "bf16", 64, 4, 4, [1, 16, 5], [3000, 40, 777], {"kv_splits": 4}),
    ("alibi", "bf16", 128, 4, 2, [200, 33, 512], None, {}),
    ("document", "fp16", 64, 2, 2, [300, 77, 129], None, {}),
    ("dropout_causal", "bf16", 64, 2, 2, [90, 200, 17], None, {"dropout_p": 0.2}),
    ("bigbird", "bf16", 64, 2, 2, [700, 129, 256], None, {}),
    ("sliding_window", "fp16", 64, 2, 1, [600, 1030, 64], None, {"deterministic": True}),
    ("softcap", "bf16", 128, 2, 2, [65, 1, 300], [70, 9, 300], {}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-d{c[2]}")
def test_varlen_matches_each_sequence_alone(case, monkeypatch):
    monkeypatch.setenv("FLASHGEN_POISON", "1")
    spec, dtype, d, Hq, Hkv, lens_q, lens_k, options = case
    lens_k = lens_k or lens_q
    op = flashgen.compile(spec)
    row = compare(op, dtype, d, len(lens_q), Hq, Hkv, 0, 0, seed=sum(lens_q) + len(lens_k),
                  label=spec, lengths=(lens_q, lens_k), **options)
    assert not row["failures"], row


def test_varlen_checks_its_offsets_before_any_launch():
    op = flashgen.compile("causal")
    q = torch.randn(10, 2, 64, device="cuda", dtype=torch.bfloat16)
    bad = torch.tensor([0, 4, 3, 10], dtype=torch.int32, device="cuda")
    with pytest.raises(flashgen.ArgumentError, match="must rise from 0"):
        op.varlen(q, q, q, bad, bad)
