"""A tiny quick benchmark end to end on the GPU: every peer, two specs, two sizes; the
folder holds a CSV row per (case, peer, direction), meta.json names the GPU, and
flashgen's own rows and ratios are finite."""
import json
import math

import pytest
import torch

from flashgen import cli
from flashgen.bench import report
from flashgen.bench.peers import FLASHGEN, PEERS

pytestmark = pytest.mark.gpu


def test_quick_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "causal", "alibi", "--quick", "--sizes", "512,1024", "--reps", "3",
            "--out", str(out)]
    assert cli.main(argv) == 0
    rows = report.read_rows(out / "results.csv")
    assert len(rows) == 2 * 2 * (1 + len(PEERS)) * 2        # specs x N x peers x directions
    ours = [r for r in rows if r["peer"] == FLASHGEN]
    assert all(r["status"] == "ok" and math.isfinite(r["tflops"]) and r["tflops"] > 0
               for r in ours), ours
    assert all(math.isfinite(r["flashgen_ratio"]) for r in rows
               if r["peer"] != FLASHGEN and r["status"] == "ok")
    by = {(r["spec"], r["N"], r["peer"], r["direction"]): r for r in rows}
    assert by[("causal", 1024, "flash", "fwd")]["status"] == "ok"          # is_causal
    assert by[("alibi", 1024, "flash", "fwd")]["status"] == "n/a"          # needs a mask
    assert by[("causal", 1024, FLASHGEN, "fwd")]["visible"] == pytest.approx(0.5 + 1 / 2048)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["gpu"] == torch.cuda.get_device_name() and meta["commands"]
    assert "flashgen" in capsys.readouterr().out
    # the same command again finds everything measured and adds no row
    lines = (out / "results.csv").read_text().count("\n")
    assert cli.main(argv) == 0
    assert (out / "results.csv").read_text().count("\n") == lines
