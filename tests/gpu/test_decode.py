"""Split-KV decoding (templates/kernels/combine.cuh) against the oracle: few query rows
against long K/V, the splits chosen by shape or forced, with masks that skip tiles
(bottom-right causal, documents), block-sparse lists, ALiBi with learned slopes (the
gradients go through the combined O and lse), dropout, GQA, and rows no split sees; up to
64 query rows (no dropout, no exact P) the sm90 family's forward runs one consumer."""
import pytest
import torch

import flashgen
from flashgen.runtime import launch

from .oracle import compare

pytestmark = pytest.mark.gpu

# The shipped document spec has one doc table of length N (Nq = Nk); a KV cache has its own.
DECODE_DOCUMENTS = """
attention decode_documents {
  head_dim = 64, 128
  param doc_q: i32[B, Nq]   # document of each new query row
  param doc_k: i32[B, Nk]   # document of each cached key
  mask = causal_bottom_right && doc_q[b, q_idx] == doc_k[b, kv_idx]
}
"""

CASES = [
    # spec, dtype, d, B, Hq, Hkv, Nq, Nk, splits (None: by shape), call options
    ("causal_bottom_right", "bf16", 128, 2, 8, 2, 1, 4097, None, {}),
    ("causal_bottom_right", "fp16", 64, 1, 4, 4, 16, 3000, 7, {}),
    ("dense", "bf16", 64, 1, 2, 1, 3, 1000, 64, {}),            # more splits than tiles
    ("alibi", "bf16", 128, 1, 4, 2, 4, 2048, None, {}),          # Nq <= Nk: causal rows
    (DECODE_DOCUMENTS, "fp16", 64, 2, 2, 2, 9, 2000, 5, {}),    # runtime tile lists
    ("bigbird", "bf16", 64, 1, 2, 2, 128, 4096, 6, {}),          # block-sparse lists
    ("dropout_causal", "bf16", 64, 1, 2, 2, 8, 1500, 4, {"dropout_p": 0.2}),
    ("causal", "bf16", 64, 1, 2, 2, 8, 1500, 3, {}),             # rows 0-7 see one split
    # the one-consumer decoding instance (forward.cu.j2 DecodeTiles) up to 64 query rows,
    # the general instance's 128 / 192 from 65
    ("softcap", "bf16", 256, 1, 4, 2, 5, 3000, None, {}),
    ("causal_bottom_right", "bf16", 128, 1, 2, 2, 64, 4096, 4, {}),
    ("causal_bottom_right", "fp16", 64, 1, 2, 2, 65, 4096, 4, {}),
    # a padded batch, unsplit: the lean instance (persistent at d <= 128), one consumer too
    ("dense", "bf16", 64, 16, 16, 4, 3, 700, 1, {}),
    ("causal", "fp16", 128, 2, 4, 4, 64, 64, 1, {}),
    ("softcap", "bf16", 256, 4, 8, 8, 2, 600, 1, {}),
    (DECODE_DOCUMENTS, "bf16", 128, 2, 2, 2, 9, 2000, 1, {}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0] if '{' not in c[0] else 'documents'}-{c[1]}-{c[6]}x{c[7]}-s{c[8]}")
def test_split_kv_matches_reference(case, monkeypatch):
    monkeypatch.setenv("FLASHGEN_POISON", "1")
    spec, dtype, d, B, Hq, Hkv, Nq, Nk, splits, options = case
    op = flashgen.compile(spec)
    row = compare(op, dtype, d, B, Hq, Hkv, Nq, Nk, seed=Nk + Nq, label=op.spec.name,
                  kv_splits=splits, **options)
    assert not row["failures"], row


def test_decoding_shapes_split_by_themselves():
    op = flashgen.compile("causal_bottom_right")
    q = torch.empty(1, 8, 1, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.empty(1, 8, 32768, 128, device="cuda", dtype=torch.bfloat16)
    assert launch.kv_splits(op.key, q, k) > 1
    big_q = torch.empty(4, 16, 4096, 128, device="cuda", dtype=torch.bfloat16)
    assert launch.kv_splits(op.key, big_q, k) == 1        # enough Q tiles already
