"""The benchmark suite's parts that need no GPU: the FLOP count and visible fraction
against brute force, the FlexAttention translation against the reference, SDPA's
expressibility decisions, the results folder (CSV, meta.json, table, plots), the
command line and its errors."""
import importlib.util
import io
import json
import math

import pytest
import torch

import flashgen
from flashgen import cli
from flashgen.bench import BenchError, NotExpressible, flex, grid, peers, report
from flashgen.bench.command import make_plan
from flashgen.bench.flops import attention_flops, tflops
from flashgen.progress import Progress
from flashgen.bench.suite import LONG_SPECS
from flashgen.reference.attention import grid_variables, visible
from flashgen.reference.attention import run as run_reference
from flashgen.reference.evaluate import Evaluator
from flashgen.runtime.arguments import bind
from flashgen.runtime.examples import example_layout, example_params

SHIPPED = sorted(flashgen.shipped())


def _call(spec, B=2, H=4, Hkv=None, N=300, dtype=torch.float32, q=None, k=None, v=None,
          dropout_p=0.0, **params):
    """A bound call of `spec` (a name or spec text) with example parameters; q, k, v are
    zero-strided views unless given (the grid needs only their shapes)."""
    spec = flashgen.api.load(spec) if isinstance(spec, str) else spec
    d = spec.head_dims[0]
    Hkv = Hkv or H
    gen = torch.Generator().manual_seed(0)
    values = {**example_params(spec, B, H, N, N, gen), **params}
    layout = example_layout(spec, H, N, N, gen, density=0.25)

    def zeros(heads, dim):
        return torch.zeros((), dtype=dtype).expand(B, heads, N, dim)
    q = q if q is not None else zeros(H, d)
    k = k if k is not None else zeros(Hkv, d)
    v = v if v is not None else zeros(Hkv, spec.value_dim_for(d))
    return bind(spec, q, k, v, params=values, layout=layout, dropout_p=dropout_p)


def _brute_visible(call) -> torch.Tensor:
    """bool [B, H, Nq, Nk] from the reference, over the whole grid at once."""
    B, H, _, Nq, Nk = call.shape
    evaluator = Evaluator(call.spec, grid_variables(B, H, Nq, Nk, "cpu"), call.params,
                          torch.float64, "cpu")
    keep = visible(call.spec, call, evaluator)
    keep = torch.ones(1, 1, Nq, Nk, dtype=torch.bool) if keep is None else keep
    return keep.expand(B, H, Nq, Nk)


# ------------------------------------------------------------------ FLOPs and visibility


def test_flop_convention():
    # FlashAttention: 4 B H N^2 d forward, 2.5x backward, 3.5x both; d != dv uses (d + dv) / 2
    assert attention_flops(2, 16, 1024, 1024, 128, 128, 1.0, "fwd") == 4 * 2 * 16 * 1024**2 * 128
    assert attention_flops(1, 1, 8, 8, 64, 64, 0.5, "fwd+bwd") == 3.5 * 4 * 64 * 64 * 0.5
    assert attention_flops(1, 1, 8, 8, 64, 64, 1.0, "bwd") == 2.5 * 4 * 64 * 64
    assert attention_flops(1, 1, 8, 8, 64, 32, 1.0, "fwd") == 2 * 64 * 96
    assert tflops(2e12, 1000.0) == pytest.approx(2.0)


@pytest.mark.parametrize("N", [1, 7, 512])
def test_causal_fraction_is_half_plus_diagonal(N):
    v = grid.visibility(_call("causal", B=1, H=2, N=N))
    assert v.fraction == pytest.approx(0.5 + 1 / (2 * N))
    assert v.is_causal and (v.is_dense == (N == 1))


@pytest.mark.parametrize("name, params", [
    ("sliding_window", {"window": 37}), ("sliding_window", {}), ("block_layout", {}),
    ("document", {}), ("key_padding", {}), ("butterfly_causal", {}), ("bigbird", {}),
    ("prefix_lm", {"prefix": 50}), ("dilated", {"width": 20, "step": 3}),
    ("causal_bottom_right", {}), ("dense", {}), ("alibi", {})])
def test_visibility_matches_brute_force_in_small_chunks(monkeypatch, name, params):
    call = _call(name, N=300, **params)
    want = _brute_visible(call)
    monkeypatch.setattr(grid, "CHUNK_ELEMENTS", 4000)      # many row blocks, some ragged
    got = grid.visibility(call)
    assert got.fraction == want.double().mean().item()
    assert got.is_dense == bool(want.all())
    causal = torch.ones(300, 300, dtype=torch.bool).tril()
    assert got.is_causal == bool((want == causal).all())


def test_visibility_names_the_shapes_sdpa_has_flags_for():
    assert grid.visibility(_call("causal_bottom_right", N=64)).is_causal   # Nq == Nk
    assert grid.visibility(_call("sliding_window", N=64, window=64)).is_causal
    assert not grid.visibility(_call("sliding_window", N=64, window=63)).is_causal
    assert grid.visibility(_call("prefix_lm", N=64, prefix=64)).is_dense
    full = torch.full((2,), 64, dtype=torch.int32)
    assert grid.visibility(_call("key_padding", N=64, kv_lengths=full)).is_dense


def test_explicit_masks_match_the_reference(monkeypatch):
    monkeypatch.setattr(grid, "CHUNK_ELEMENTS", 5000)
    call = _call("document", N=200)
    mask = grid.explicit_mask(call)
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 200, 200)    # no head dependence
    assert torch.equal(mask.expand(2, 4, 200, 200), _brute_visible(call))
    # ALiBi's bias (the score at score = 0) with -inf where hidden, one plane per head
    call = _call("alibi", N=100)
    bias = grid.explicit_mask(call, torch.float64)
    assert bias.shape == (1, 4, 100, 100)
    slopes = call.params["slopes"].double().view(1, 4, 1, 1)
    distance = (torch.arange(100).view(1, -1) - torch.arange(100).view(-1, 1)).double()
    want = (slopes * distance).masked_fill(~_brute_visible(call)[:1], float("-inf"))
    torch.testing.assert_close(bias, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ SDPA decisions


@pytest.mark.parametrize("name, change", [
    ("dense", "none"), ("causal", "none"), ("alibi", "additive"), ("t5_bias", "additive"),
    ("softcap", "other"), ("temperature", "other"), ("alibi_window_softcap", "other")])
def test_score_change_of_shipped_specs(name, change):
    assert peers.score_change(flashgen.api.load(name)) == change


@pytest.mark.parametrize("score, change", [
    ("score - bias[h] + 1.0", "additive"), ("bias[h] + score", "additive"),
    ("2.0 * score", "other"), ("score + score", "other"), ("bias[h] - score", "other")])
def test_score_change_reads_the_expression(score, change):
    spec = flashgen.api.load(f"attention t {{ param bias: f32[H]\n score = {score} }}")
    assert peers.score_change(spec) == change


@pytest.mark.parametrize("name, form", [
    ("dense", peers.SdpaForm(False, None)), ("causal", peers.SdpaForm(True, None)),
    ("dropout_causal", peers.SdpaForm(True, None)),
    ("sliding_window", peers.SdpaForm(False, "bool")),
    ("block_layout", peers.SdpaForm(False, "bool")),
    ("alibi", peers.SdpaForm(False, "additive"))])
def test_sdpa_form(name, form):
    call = _call(name, N=2048)
    assert peers.sdpa_form(call.spec, grid.visibility(call)) == form


def test_sdpa_cannot_express_nonlinear_scores_or_masks_on_flash():
    call = _call("softcap", N=64)
    with pytest.raises(NotExpressible, match="not additive"):
        peers.sdpa_form(call.spec, grid.visibility(call))
    call = _call("sliding_window", N=64, window=16)
    subject = peers.Subject(None, call, {}, grid.visibility(call), 1 << 30)
    with pytest.raises(NotExpressible, match="no attn_mask"):
        peers.sdpa_runner("flash", subject)
    subject.free_bytes = 4 * 64 * 64    # too little for a [1, 1, 64, 64] mask and its copy
    with pytest.raises(NotExpressible, match="mask too large"):
        peers.sdpa_runner("efficient", subject)


def test_standard_attention_needs_room_and_no_dropout():
    call = _call("causal", B=1, H=16, N=2048)       # 4 float32 score copies: 1 GiB
    causal = grid.Visibility(0.5, False, True)
    subject = peers.Subject(None, call, {}, causal, free_bytes=1 << 30)
    with pytest.raises(NotExpressible, match="N x N scores need ~1.0 GiB, 1.0 GiB free"):
        peers.standard_runner(subject)
    call = _call("dropout_causal", N=64, dropout_p=0.1)
    subject = peers.Subject(None, call, {}, grid.visibility(call), free_bytes=8 << 30)
    with pytest.raises(NotExpressible, match="dropout"):
        peers.standard_runner(subject)
    with pytest.raises(NotExpressible, match="no dropout"):
        flex.translate(call)


# ------------------------------------------------------------------ FlexAttention


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", [n for n in SHIPPED if not flashgen.api.load(n).dropout])
def test_flex_translation_is_exact(name):
    """Eager flex_attention on the CPU (its mods traced by torch.compile, as on the GPU)
    with the translated mods and BlockMask, against the reference, float64, GQA 4:2."""
    from torch.nn.attention.flex_attention import flex_attention
    spec = flashgen.api.load(name)
    N = 260 if spec.block_sparse is not None else 40
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, h, N, spec.head_dims[0], generator=gen, dtype=torch.float64)
               for h in (4, 2, 2))
    call = _call(spec, B=2, H=4, Hkv=2, N=N, q=q, k=k, v=v)
    form = flex.translate(call, torch.float64)
    mask = flex.block_mask(form, call, compile=False)
    got = flex.attention(flex_attention, form, call, mask, q, k, v)
    torch.testing.assert_close(got, run_reference(call), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ results folder


def _rows():
    case = {"sweep": "grid", "spec": "causal", "dtype": "bf16", "d": 128, "B": 2, "H": 16,
            "Hkv": 16, "N": 8192}
    rows = [
        {**case, "peer": "flashgen", "direction": "fwd", "status": "ok", "ms": 1.0, "tflops": 400.0,
         "visible": 0.5, "extra_mib": 1.0, "reps": 20},
        {**case, "peer": "flash", "direction": "fwd", "status": "ok", "ms": 1.25, "tflops": 320.0,
         "visible": 0.5, "extra_mib": 2.0, "reps": 20},
        {**case, "peer": "flex", "direction": "fwd", "status": "n/a", "note": "FlexAttention has no dropout",
         "visible": 0.5},
        {**case, "N": 4096, "B": 4, "peer": "flashgen", "direction": "fwd+bwd", "status": "ok",
         "ms": 2.0, "tflops": 300.0, "visible": 0.5, "extra_mib": 5.0},
        {**case, "N": 4096, "B": 4, "peer": "standard", "direction": "fwd+bwd", "status": "OOM",
         "visible": 0.5},
    ]
    long = {**case, "sweep": "long", "B": 1}
    for N in (32768, 65536):
        for peer, ms in (("flashgen", 10.0), ("cudnn", 12.0)):
            rows.append({**long, "N": N, "peer": peer, "direction": "fwd", "status": "ok", "ms": ms,
                         "tflops": 100.0, "visible": 0.5, "extra_mib": N / 100})
    return rows


def test_results_csv_round_trips_with_ratios(tmp_path):
    results = report.Results(tmp_path / "run")
    for row in _rows():
        results.add(row)
    rows = report.read_rows(tmp_path / "run" / "results.csv")
    assert len(rows) == len(_rows())
    flash = next(r for r in rows if r["peer"] == "flash")
    assert flash["flashgen_ratio"] == pytest.approx(1.25) and flash["N"] == 8192
    assert next(r for r in rows if r["peer"] == "flex")["ms"] is None
    # a resumed folder knows what is measured; an error is measured again, its last row wins
    again = report.Results(tmp_path / "run")
    assert again.has(report_case(flash), "flash", "fwd")
    again.add({**flash, "peer": "efficient", "status": "error", "note": "boom", "ms": None})
    assert not report.Results(tmp_path / "run").has(report_case(flash), "efficient", "fwd")
    again.add({**flash, "peer": "efficient", "status": "ok", "ms": 2.0})
    rows = report.read_rows(tmp_path / "run" / "results.csv")
    assert [r["status"] for r in rows if r["peer"] == "efficient"] == ["ok"]


def report_case(row):
    return {f: row[f] for f in report.CASE_FIELDS}


def test_table_shows_throughput_ratio_and_reasons():
    text = report.table([{**r, **{f: r.get(f) for f in report.CSV_FIELDS}} for r in _rows()])
    assert "320 1.25x" in text and "n/a" in text and "OOM" in text
    assert "flex n/a: FlexAttention has no dropout" in text
    assert "long: median time and peak extra memory" in text and "12 ms 655 MiB" in text
    lines = text.splitlines()
    assert lines[1].split()[:3] == ["spec", "dtype", "d"]


def test_kv_block_sweep_has_its_own_table_and_plot(tmp_path):
    case = {f: None for f in report.CSV_FIELDS} | {
        "sweep": "grid", "spec": "dense", "dtype": "bf16", "d": 64, "B": 2, "H": 32, "Hkv": 32,
        "N": 8192, "direction": "fwd", "status": "ok", "visible": 1.0}
    rows = [{**case, "peer": "flashgen", "ms": 2.0, "tflops": 300.0}]
    rows += [{**case, "peer": f"flashgen@kv{b}", "ms": ms, "tflops": 600 / ms}
             for b, ms in ((32, 3.0), (64, 2.2), (128, 2.0))]
    rows.append({**case, "peer": "flashgen@kv256", "status": "n/a", "note": "shared memory"})
    text = report.table(rows)
    grid, sweep = text.split("\n\n")[:2]
    assert "flashgen@kv" not in grid.splitlines()[1]          # not peers of the grid table
    assert sweep.startswith("kv-block sweep")
    assert sweep.splitlines()[1].split() == ["spec", "dtype", "d", "N", "dir", "planner",
                                             "kv32", "kv64", "kv128", "kv256"]
    assert sweep.splitlines()[3].split()[4:] == ["fwd", "2", "ms", "3", "ms", "1.50x", "2.2", "ms",
                                                 "1.10x", "2", "ms", "1.00x", "n/a"]
    if importlib.util.find_spec("matplotlib"):
        written = report.plot(rows, tmp_path)
        assert sorted(p.name for p in written) == ["dense_bf16.png", "kvblocks_dense_bf16.png"]


def test_meta_json_merges_commands(tmp_path):
    meta = report.collect_meta("flashgen bench causal")
    assert meta["torch"] == torch.__version__ and meta["commands"] == ["flashgen bench causal"]
    report.write_meta(tmp_path, {**meta, "date": "first"})
    merged = report.write_meta(tmp_path, {**meta, "date": "second", "commands": ["again"]})
    saved = json.loads((tmp_path / "meta.json").read_text())
    assert saved == merged and saved["date"] == "first"
    assert saved["commands"] == ["flashgen bench causal", "again"]


def test_results_folder_names_date_and_gpu():
    import datetime
    when = datetime.datetime(2026, 11, 23, 14, 5)
    folder = report.default_folder("NVIDIA H100 80GB HBM3", when)
    assert folder.name == "2026-11-23-1405-h100-80gb-hbm3"
    assert folder.parent.parts[-3:] == ("flashgen", "bench", "results")


def test_plots_from_rows(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{**r, **{f: r.get(f) for f in report.CSV_FIELDS}} for r in _rows()]
    written = report.plot(rows, tmp_path)
    assert sorted(p.name for p in written) == ["causal_bf16.png", "long_causal_bf16_d128.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_bench_plot_command(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results = report.Results(tmp_path)
    for row in _rows():
        results.add(row)
    assert cli.main(["bench-plot", str(tmp_path)]) == 0
    assert "320 1.25x" in capsys.readouterr().out
    assert (tmp_path / "plots" / "causal_bf16.png").exists()
    assert cli.main(["bench-plot", str(tmp_path / "nothing")]) == 1
    assert "no results.csv" in capsys.readouterr().err


def test_progress_rewrites_in_place_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    plain, tty = io.StringIO(), Terminal()
    for stream in (plain, tty):
        progress = Progress(stream)
        progress.update("one")
        progress.update("two")
        progress.finish("done")
    assert plain.getvalue() == "one\ntwo\ndone\n"
    assert tty.getvalue().startswith("\rone\x1b[K\rtwo") and tty.getvalue().endswith("done\x1b[K\n")


# ------------------------------------------------------------------ the command line


def _args(*argv):
    import argparse

    from flashgen.bench.command import add_bench_arguments
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(argv)


def test_plan_of_the_size_grid():
    plan = make_plan(_args("causal", "alibi_window_softcap"))
    assert plan.settings.peers == peers.PEERS and plan.settings.directions == ("fwd", "fwd+bwd")
    cases = {(c.spec, c.dtype, c.d, c.N): c for c in plan.cases}
    assert len(cases) == 4 * 6 + 2 * 6          # causal: 2 dtypes x 2 dims; the other bf16 only
    c = cases[("causal", "fp16", 64, 512)]
    assert (c.B, c.H, c.Hkv) == (32, 32, 32)    # B N = 16k tokens, H d = 2048
    c = cases[("causal", "bf16", 128, 16384)]
    assert (c.B, c.H) == (1, 16)


def test_plan_of_long_quick_and_suite():
    plan = make_plan(_args("--suite", "--long"))
    assert sorted({c.spec for c in plan.cases}) == sorted(LONG_SPECS)
    assert {(c.B, c.H, c.dtype) for c in plan.cases} == {(1, 16, "bf16")}
    assert max(c.N for c in plan.cases) == 131072
    plan = make_plan(_args("bigbird", "softcap", "--quick"))
    assert {(c.spec, c.d) for c in plan.cases} == {("bigbird", 64), ("softcap", 128)}
    assert (plan.settings.warmup, plan.settings.reps) == (1, 5) and not plan.notes
    plan = make_plan(_args("bigbird", "--head-dim", "64,128", "--sizes", "512"))
    assert len(plan.cases) == 2 and "no kernel for 128" in plan.notes[0]
    assert len(make_plan(_args("--suite", "--sizes", "1024")).cases) > len(SHIPPED)


def test_plan_settles_under_the_power_cap_unless_quick():
    from flashgen.bench.timing import SETTLE_SECONDS
    assert make_plan(_args("causal")).settings.settle_seconds == SETTLE_SECONDS
    assert make_plan(_args("causal", "--quick")).settings.settle_seconds == 0
    assert make_plan(_args("causal", "--quick", "--settle", "1.5")).settings.settle_seconds == 1.5
    with pytest.raises(BenchError, match="--settle"):
        make_plan(_args("causal", "--settle", "-1"))


class _FakeGpu:
    """torch.cuda's events and waits over a fake clock: each run of fn takes `run_ms` of
    GPU time, queued until a wait; `log` keeps what the CPU did, in order."""

    def __init__(self, monkeypatch, run_ms: float):
        import flashgen.bench.timing as timing
        self.now, self.run_ms, self.log, self.queued = 0.0, run_ms, [], 0
        gpu = self

        class Event:
            def __init__(self, enable_timing=False):
                self.at = None

            def record(self):
                gpu.log.append("record")
                self.at = gpu.queued

            def elapsed_time(self, other):
                return (other.at - self.at) * gpu.run_ms

        def synchronize(device=None):
            gpu.log.append("wait")
            gpu.now += gpu.queued * gpu.run_ms / 1e3
            gpu.queued = 0

        monkeypatch.setattr(timing.torch.cuda, "Event", Event)
        monkeypatch.setattr(timing.torch.cuda, "synchronize", synchronize)
        monkeypatch.setattr(timing.time, "perf_counter", lambda: gpu.now)
        monkeypatch.setattr(timing, "_l2_buffer", lambda device: torch.zeros(1))

    def fn(self):
        self.log.append("run")
        self.queued += 1


@pytest.mark.parametrize("run_ms, batch", [(0.5, 40), (2.0, 10), (50.0, 1)])
def test_time_ms_settles_in_batches_of_20_ms_before_timing(monkeypatch, run_ms, batch):
    """The untimed runs before a measurement cover settle_seconds of GPU time, issued in
    batches of ~20 ms between waits (a wait after each run leaves the GPU idle for every
    launch: it never reached the power cap), then the timed runs follow."""
    from flashgen.bench.timing import time_ms
    gpu = _FakeGpu(monkeypatch, run_ms)
    timing = time_ms(gpu.fn, warmup=2, reps=5, max_seconds=1.0, device="cpu", settle_seconds=0.4)
    assert timing.median_ms == run_ms and timing.reps == 5
    log = "".join({"run": "r", "wait": "w", "record": "e"}[x] for x in gpu.log)
    settle = log[2 + len("ere" + "w"):log.index("e", 6)]  # after the warm-up and the sizing run
    batches = [len(b) for b in settle.split("w") if b]
    assert batches and all(n == batch for n in batches)
    # 400 ms covered, overshooting by at most a batch (and the fake clock's rounding)
    assert sum(batches) * run_ms >= 400 - 1e-6 and (sum(batches) - batch) * run_ms <= 400 + 1e-6


def test_time_ms_without_settle_times_after_the_warm_up(monkeypatch):
    from flashgen.bench.timing import time_ms
    gpu = _FakeGpu(monkeypatch, 1.0)
    time_ms(gpu.fn, warmup=3, reps=4, device="cpu", settle_seconds=0)
    # the warm-up, then the timed runs (one to size them, then the rest), nothing between
    assert "".join({"run": "r", "wait": "w", "record": "e"}[x] for x in gpu.log) == \
        "rrr" + "ere" + "w" + "ere" * 3 + "w"


def test_block_size_sweep_runs_flashgen_at_each_kv_tile_as_peers():
    """--kv-blocks adds flashgen at other forward KV tiles as peers (ratios to the plan's
    tile in every row); a tile the planner refuses is left to its rows (n/a), not built."""
    from flashgen.bench.suite import _sweep_tiles
    plan = make_plan(_args("causal", "--kv-blocks", "32,64,128", "--peers", "flash"))
    assert plan.settings.peers == ("flash", "flashgen@kv32", "flashgen@kv64", "flashgen@kv128")
    # the planner's kernel (family and query rows: 128 at d = 128, 192 at d = 64) with
    # the swept keys per tile
    tiles = _sweep_tiles("causal", 128, 32)
    assert (tiles.forward, tiles.family) == ((128, 32), "wgmma_ws_persistent")
    tiles = _sweep_tiles("causal", 64, 64)
    assert (tiles.forward, tiles.family) == ((192, 64), "wgmma_ws_persistent")
    assert _sweep_tiles("causal", 128, 256) is None             # shared memory: refused
    assert _sweep_tiles("causal", 128, 176).forward == (128, 176)  # FlashAttention-3's
    assert _sweep_tiles("causal", 128, 48) is None              # no wgmma of that N here
    with pytest.raises(BenchError, match="multiple of 16"):
        make_plan(_args("causal", "--kv-blocks", "40"))


@pytest.mark.parametrize("argv, message", [
    (["bench", "causal", "--peers", "flash,fa3"],
     "unknown peer 'fa3'; valid: flash, cudnn, efficient, flex, standard"),
    (["bench", "causal", "--directions", "bwd"], "unknown direction 'bwd'"),
    (["bench", "causal", "--dtype", "fp32"], "unknown dtype 'fp32'"),
    (["bench", "causal", "--sizes", "1k"], "--sizes must be integers"),
    (["bench", "causal", "--reps", "1"], "--reps >= 3"),
    (["bench"], "name the specs to bench"),
    (["bench", "causal", "--suite"], "not both"),
    (["bench", "nonesuch"], "not a spec file"),
    (["bench", "causal"], "needs a CUDA GPU"),
])
def test_bench_errors_are_one_line(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("flashgen: error: ")


def test_finite_visible_fraction_for_every_shipped_spec():
    for name in SHIPPED:
        fraction = grid.visibility(_call(name, B=1, H=2, N=256)).fraction
        assert 0 < fraction <= 1 and math.isfinite(fraction), name


# ------------------------------------------------------------------ the decoding sweep


def test_plan_of_the_decoding_sweep():
    from flashgen.bench.suite import DECODE_SPECS
    plan = make_plan(_args("--suite", "--decode"))
    assert sorted({c.spec for c in plan.cases}) == sorted(DECODE_SPECS)
    assert plan.settings.directions == ("fwd",)
    assert {(c.B, c.H, c.dtype, c.Nq) for c in plan.cases} == {(8, 16, "bf16", 1), (8, 16, "bf16", 16)}
    assert max(c.N for c in plan.cases) == 131072
    c = plan.cases[0]
    assert c.fields()["Nq"] == c.Nq and "Nq=" in c.label()
    plan = make_plan(_args("causal_bottom_right", "--decode", "--rows", "4", "--sizes", "2048",
                           "--directions", "fwd,fwd+bwd"))
    assert [(c.Nq, c.N) for c in plan.cases] == [(4, 2048)] * len(plan.cases)
    assert plan.settings.directions == ("fwd", "fwd+bwd")
    with pytest.raises(BenchError, match="--long or --decode"):
        make_plan(_args("causal", "--long", "--decode"))
    with pytest.raises(BenchError, match="--rows sets the query rows of --decode"):
        make_plan(_args("causal", "--rows", "4"))
    # --batch: one batch for the whole sweep (B = 1 leaves the SMs to split-KV)
    plan = make_plan(_args("dense", "--decode", "--batch", "1", "--sizes", "4096"))
    assert {(c.B, c.H) for c in plan.cases} == {(1, 16)}
    with pytest.raises(BenchError, match="--batch sets the batch of --decode"):
        make_plan(_args("causal", "--batch", "1"))
    with pytest.raises(BenchError, match="one count >= 1"):
        make_plan(_args("dense", "--decode", "--batch", "1,2"))
    # the other sweeps' cases have Nq = N
    grid = make_plan(_args("causal", "--sizes", "1024")).cases[0]
    assert grid.fields()["Nq"] == grid.N == 1024 and "Nq" not in grid.label()


def _decode_rows():
    case = {f: None for f in report.CSV_FIELDS} | {
        "sweep": "decode", "spec": "causal_bottom_right", "dtype": "bf16", "d": 128, "B": 8,
        "H": 16, "Hkv": 16, "direction": "fwd", "status": "ok", "visible": 1.0}
    rows = []
    for nq in (1, 16):
        for N in (4096, 65536):
            rows.append({**case, "Nq": nq, "N": N, "peer": "flashgen", "ms": N / 1e6})
            rows.append({**case, "Nq": nq, "N": N, "peer": "flex", "ms": 2 * N / 1e6})
    return rows


def test_decoding_table_and_plots(tmp_path):
    text = report.table(_decode_rows())
    assert text.startswith("decode: median time and flashgen's speed-up")
    header = text.splitlines()[1].split()
    assert header[:6] == ["spec", "dtype", "d", "N", "Nq", "BxH"]
    assert "4.096 us" in text and "8.192 us 2.00x" in text
    if importlib.util.find_spec("matplotlib"):
        written = report.plot(_decode_rows(), tmp_path)
        assert [p.name for p in written] == ["decode_causal_bottom_right_bf16_d128_B8.png"]


def test_results_from_before_the_decoding_sweep_read_nq_as_n(tmp_path):
    """A results.csv written before the Nq column: its cases have Nq = N."""
    import csv
    old_fields = [f for f in report.CSV_FIELDS if f != "Nq"]
    with open(tmp_path / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(old_fields)
        writer.writerow(["grid", "causal", "bf16", "128", "2", "16", "16", "8192", "flashgen",
                         "fwd", "ok", "", "1.5"] + [""] * (len(old_fields) - 13))
    rows = report.read_rows(tmp_path / "results.csv")
    assert rows[0]["Nq"] == rows[0]["N"] == 8192 and rows[0]["ms"] == 1.5
    assert report.Results(tmp_path).has({**report_case(rows[0])}, "flashgen", "fwd")


def test_families_run_flashgen_on_other_kernel_families_as_peers():
    """--families adds flashgen on another kernel family as a peer (flashgen/mma: the
    mma.sync kernels beside the sm90 ones, in the same run); the grid table gets its
    column; a family that cannot take a head dim is not built."""
    from flashgen.bench.suite import _family_fits
    plan = make_plan(_args("causal", "--families", "mma", "--peers", "flash"))
    assert plan.settings.peers == ("flash", "flashgen/mma")
    assert _family_fits("causal", 128, "mma") and _family_fits("causal", 128, "wgmma")
    assert not _family_fits("causal", 96, "wgmma")              # sm90: d of 64, 128, 256
    with pytest.raises(BenchError, match="unknown family 'tcgen05'"):
        make_plan(_args("causal", "--families", "tcgen05"))
    row = dict(sweep="grid", spec="causal", dtype="bf16", d=128, B=1, H=2, Hkv=2, N=1024,
               Nq=1024, direction="fwd", status="ok", note="", ms=1.0, tflops=100.0,
               visible=0.5)
    text = report.table([dict(row, peer="flashgen"), dict(row, peer="flashgen/mma", ms=2.0,
                                                          tflops=50.0)])
    assert "flashgen/mma" in text.splitlines()[1]


def test_header_ab_renders_each_position_from_its_own_headers(tmp_path):
    """tests/gpu/switch_ab.py's `header` switch: with a templates/ folder as the other
    tree, the first position renders every hand-written header from that folder and the
    second from this tree; restore() leaves the launcher as it was."""
    import shutil

    from flashgen import resources
    from flashgen.runtime import launch
    from tests.gpu import switch_ab
    other = tmp_path / "templates"
    shutil.copytree(resources.templates_dir(), other)
    (other / "common" / "expr.cuh").write_text("// the other tree's expr.cuh\n")
    (other / "kernels" / "mask.cuh").write_text("// the other tree's mask.cuh\n")
    render, module = launch.render_module, launch.module
    settings, restore = switch_ab._header_settings("expr.cuh", str(other))
    try:
        op = flashgen.compile("causal")
        v = launch.variant(op.key)
        rendered = {}
        for label, put in settings.items():
            put()
            rendered[label] = launch.render_module(v.spec, v.source_path, "bf16", 64, None,
                                                   "sm_90a")
    finally:
        restore()
    theirs, ours = rendered.values()
    assert theirs["expr.cuh"] == "// the other tree's expr.cuh\n"
    assert theirs["kernels/mask.cuh"] == "// the other tree's mask.cuh\n"
    assert ours["expr.cuh"] == (resources.templates_dir() / "common" / "expr.cuh").read_text()
    assert {n: t for n, t in theirs.items() if n not in ("expr.cuh", "kernels/mask.cuh")} == \
        {n: t for n, t in ours.items() if n not in ("expr.cuh", "kernels/mask.cuh")}
    assert (launch.render_module, launch.module) == (render, module)


def test_plan_ab_plans_and_renders_each_position_its_own_way():
    """tests/gpu/switch_ab.py's `plan` switch: the first position plans the warp-specialised
    forward with the given fields and renders its kernel with them, the second as the
    planner does; restore() leaves the planner and the launcher as they were."""
    from flashgen.plan import tiles
    from flashgen.runtime import launch
    from tests.gpu import switch_ab
    planner, module = tiles._wgmma_ws_forward, launch.module
    settings, restore = switch_ab._plan_settings("kv_stages=3,q_slots=1,o_stage=0")
    try:
        op = flashgen.compile("causal")
        v = launch.variant(op.key)
        plans, rendered = {}, {}
        for label, put in settings.items():
            put()
            plans[label] = v.plan(128, "sm_90a").forward
            rendered[label] = launch.render_module(v.spec, v.source_path, "bf16", 128, None,
                                                   "sm_90a")
    finally:
        restore()
    theirs, ours = plans.values()
    assert (theirs.kv_stages, theirs.q_slots, theirs.o_stage) == (3, 1, False)
    assert ours == tiles.plan_for(v.spec, 128, arch="sm_90a").forward
    assert (ours.kv_stages, ours.q_slots, ours.o_stage) == (2, 1, True)  # 160 keys: one Q slot beside the output stage
    assert rendered["kv_stages=3,q_slots=1,o_stage=0"] != rendered["this tree's"]
    assert (tiles._wgmma_ws_forward, launch.module) == (planner, module)
    assert v.plan(128, "sm_90a") == tiles.plan_for(v.spec, 128, arch="sm_90a")


@pytest.mark.parametrize("fields", ["kv_stages", "kv_stages=three", "stages=3", "family=1"])
def test_plan_ab_names_a_bad_field_without_a_traceback(fields):
    """switch_ab.py plan --fields: a malformed item or an unknown name is a plain message
    that lists ForwardPlan's fields."""
    from tests.gpu import switch_ab
    with pytest.raises(SystemExit, match="is not NAME=INTEGER with a ForwardPlan field"):
        switch_ab._plan_settings(fields)


def test_plan_ab_reads_each_field_as_its_declared_type():
    """switch_ab.py plan --fields: an integer field stays an integer (kv_stages=3), a flag
    becomes a bool (o_stage=0), by ForwardPlan's own annotations."""
    from tests.gpu import switch_ab
    from flashgen.plan import tiles
    settings, restore = switch_ab._plan_settings("kv_stages=3,o_stage=0")
    try:
        settings["kv_stages=3,o_stage=0"]()
        plan = tiles._wgmma_ws_forward(128, 128, 128, True, 2)
        assert (plan.kv_stages, plan.o_stage) == (3, False)
        assert type(plan.kv_stages) is int and type(plan.o_stage) is bool
    finally:
        restore()


def test_ab_rounds_alternate_which_position_runs_first():
    """switch_ab.py: odd rounds run B first, so that each position leads as often (a fixed
    A-then-B order favoured B by ~0.75 % in an A/A on an H100); --fixed-order keeps A first."""
    from tests.gpu import switch_ab
    settings = {"A": "put a", "B": "put b"}
    orders = [[label for label, _ in switch_ab.round_order(settings, r)] for r in range(4)]
    assert orders == [["A", "B"], ["B", "A"], ["A", "B"], ["B", "A"]]
    assert all([label for label, _ in switch_ab.round_order(settings, r, alternate=False)]
               == ["A", "B"] for r in range(4))


@pytest.mark.parametrize("run_ms, spins", [(0.05, True), (1.0, False)])
def test_time_ms_spins_before_a_short_run_whose_issue_outlasts_the_clearing(monkeypatch, run_ms,
                                                                             spins):
    """A short run that takes the CPU 120 us to issue gets a spin of three times that
    before each timed run, so that its events bracket GPU work only; a long one none."""
    import flashgen.bench.timing as timing
    gpu = _FakeGpu(monkeypatch, run_ms)
    issue = 120e-6

    def fn():
        gpu.fn()
        gpu.now += issue  # the CPU's issue time

    def sleep(cycles):
        gpu.log.append(("spin", cycles))
    monkeypatch.setattr(timing.torch.cuda, "_sleep", sleep, raising=False)
    timing.time_ms(fn, warmup=3, reps=4, device="cpu", settle_seconds=0)
    spun = [x[1] for x in gpu.log if isinstance(x, tuple)]
    cycles = int(3 * issue * timing.SPIN_CYCLES_PER_S)
    # the sizing run spins either way (its length is not known yet); the rest only if short
    assert spun == [cycles] * (4 if spins else 1)
    assert timing.issue_spin_cycles(timing.ISSUE_COVERED_S) == 0
