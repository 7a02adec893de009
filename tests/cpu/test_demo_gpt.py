"""The GPT demo on the CPU, tiny: both backends train from the same weights on the same
batches, and their loss curves agree (the flashgen layers run the spec's reference here,
SDPA the same bias as a materialised mask)."""
import json

import pytest

from flashgen.demos import gpt


def test_corpus_is_seeded_text_with_structure():
    text = gpt.corpus(5000, seed=3)
    assert len(text) == 5000 and text == gpt.corpus(5000, seed=3) != gpt.corpus(5000, seed=4)
    assert "count: " in text and '"' in text and text.count("\n") > 50


def test_both_backends_train_to_the_same_curve(tmp_path):
    out = tmp_path / "run"
    assert gpt.main(["--device", "cpu", "--steps", "12", "--layers", "1", "--embed", "64",
                     "--heads", "1", "--seq", "48", "--window", "16", "--batch", "3",
                     "--chars", "20000", "--log-every", "0", "--warmup", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    flash, sdpa = results["flashgen"]["losses"], results["sdpa"]["losses"]
    assert len(flash) == len(sdpa) == 12 and flash[-1] < flash[0] - 0.3
    assert max(abs(a - b) for a, b in zip(flash, sdpa)) < 1e-4
    assert gpt.curve_gap(flash, sdpa) < 1e-4
    pytest.importorskip("matplotlib")
    assert (out / "loss.png").stat().st_size > 10_000
