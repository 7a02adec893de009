"""Which parts of a mask the kernels compute once per row or per column
(flashgen/render/mask_parts.py): table reads that vary with one index only."""
import pytest

import flashgen
from flashgen.ir.pretty import pretty
from flashgen.render.mask_parts import split_mask
from flashgen.render.variant import render_variant


def _spec(mask: str, params: str = "") -> str:
    return f"attention t {{\n  head_dim = 64\n{params}  mask = {mask}\n}}\n"


def _split(mask: str, params: str = ""):
    parts = split_mask(flashgen.load(_spec(mask, params)))
    return parts and ([pretty(e) for e in parts.row], [pretty(e) for e in parts.column])


@pytest.mark.parametrize("mask, params, split", [
    ("causal && document(doc)", "  param doc: i32[B, N]\n",
     (["doc[b, q_idx]"], ["doc[b, kv_idx]"])),
    ("key_padding(lens)", "  param lens: i32[B]\n", ([], ["kv_idx < lens[b]"])),
    # a read that depends on neither index goes with the rows
    ("q_idx - kv_idx < w[h]", "  param w: i32[H]\n", (["w[h]"], [])),
    ("kv_idx < lens[b] && q_idx >= kv_idx", "  param lens: i32[B]\n",
     ([], ["kv_idx < lens[b]"])),
    # indexed by both: nothing to split
    ("allowed[q_idx, kv_idx]", "  param allowed: bool[N, N]\n", None),
    ("causal", "", None),
    # lets are seen through
    ("dq == doc[b, kv_idx] || kv_idx == 0", "  param doc: i32[B, N]\n  let dq = doc[b, q_idx]\n",
     (["doc[b, q_idx]"], ["doc[b, kv_idx]"])),
])
def test_split(mask, params, split):
    assert _split(mask, params) == split


def test_largest_one_sided_subtree_is_split():
    assert _split("q_idx - kv_idx < w[h] + q_idx % 2", "  param w: i32[H]\n") == \
        (["w[h] + q_idx % 2"], [])
    assert _split("(q_idx >= kv_idx) == flag[b]", "  param flag: bool[B]\n") == (["flag[b]"], [])


def test_rendered_split_reads_parts_and_keeps_mask():
    text = render_variant(flashgen.load("document"), "document.attn")
    assert "static constexpr bool kSplitMask = true;" in text
    assert "return {p.doc.at(b, q_idx)};" in text and "return {p.doc.at(b, kv_idx)};" in text
    assert "return ((q_idx >= kv_idx) && (row.v0 == col.v0));" in text
    assert "return mask_at(p, mask_row(" in text
    plain = render_variant(flashgen.load("causal"), "causal.attn")
    assert "kSplitMask = false" in plain and "MaskRow" not in plain
