"""The cases of a benchmark run and the loop that measures them, in one process.

A case is (spec, dtype, head dim, B, H, N); each peer runs it forward and forward +
backward. The size grid keeps B * N = 16k tokens and the hidden size 2048 (H = 2048 / d),
as the FlashAttention papers do; the long sweep takes B = 1, H = 16 up to N = 131,072,
where the peers that materialise a mask or the scores run out of memory."""
from __future__ import annotations

import gc
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import torch

from .. import api
from ..build.cache import device_arch, quiet
from ..plan.tiles import TileError, TileOverride, plan_for
from ..runtime.arguments import TORCH_DTYPES, bind
from ..runtime.examples import example_layout, example_params
from . import NotExpressible
from .flops import attention_flops, tflops
from .grid import visibility
from .peers import FAMILY_PREFIX, FLASHGEN, SWEEP_PREFIX, Subject, runner, sweep_tiles
from ..progress import Progress
from .report import Results
from .timing import SETTLE_SECONDS, peak_extra_bytes, time_ms

TOKENS = 16384
HIDDEN = 2048
GRID_SIZES = (512, 1024, 2048, 4096, 8192, 16384)
LONG_SIZES = (8192, 16384, 32768, 65536, 131072)
LONG_BATCH, LONG_HEADS = 1, 16
LONG_SPECS = ("causal", "sliding_window", "butterfly_causal", "document")
# decoding: a few new query rows against a long KV cache (the last query sees every key)
DECODE_SIZES = (1024, 4096, 16384, 65536, 131072)
DECODE_ROWS = (1, 16)
DECODE_BATCH, DECODE_HEADS = 8, 16
DECODE_SPECS = ("dense", "causal_bottom_right")
QUICK_SIZES = (1024, 4096)
DROPOUT_P = 0.1                 # for specs with dropout
LAYOUT_DENSITY = 0.25           # runtime block layouts: a quarter of the blocks visible


@dataclass(frozen=True)
class Case:
    sweep: str                  # "grid", "long" or "decode"
    spec: str                   # the attention's name
    dtype: str                  # "fp16" or "bf16"
    d: int
    B: int
    H: int
    Hkv: int
    N: int                      # keys (and query rows, but for decoding)
    source: str = ""            # what flashgen.compile takes (a shipped name, a path)
    Nq: int = 0                 # query rows; 0: N

    @property
    def q_len(self) -> int:
        return self.Nq or self.N

    def fields(self) -> dict:
        """The case's columns in a results row."""
        fields = asdict(self)
        del fields["source"]
        fields["Nq"] = self.q_len
        return fields

    def label(self) -> str:
        rows = f" Nq={self.Nq}" if self.Nq and self.Nq != self.N else ""
        return f"{self.spec} {self.dtype} d{self.d} N={self.N}{rows} B={self.B} H={self.H}"


def spec_configs(spec, dtypes, head_dims, notes: list[str], strict: bool) -> list[tuple[str, int]]:
    """The requested (dtype, head dim)s that the spec has kernels for. strict (the user
    named them): the others are noted; else a spec with none of them runs its nearest."""
    have_dtypes = [t for t in dtypes if t in spec.dtypes]
    have_dims = [d for d in head_dims if d in spec.head_dims]
    if strict:
        lacking = [x for x in (*dtypes, *head_dims) if x not in (*have_dtypes, *have_dims)]
        if lacking:
            notes.append(f"{spec.name}: no kernel for {', '.join(map(str, lacking))} (it has "
                         f"{'/'.join(spec.dtypes)}, head_dim {', '.join(map(str, spec.head_dims))})")
    else:
        have_dtypes = have_dtypes or [spec.dtypes[0]]
        have_dims = have_dims or [min(spec.head_dims, key=lambda d: (abs(d - head_dims[0]), d))]
    return [(t, d) for t in have_dtypes for d in have_dims]


def grid_cases(sources, sizes, dtypes, head_dims, notes: list[str], strict=True) -> list[Case]:
    """B * N = 16k tokens, H = 2048 / d."""
    cases = []
    for source in sources:
        spec = api.load(source)
        for dtype, d in spec_configs(spec, dtypes, head_dims, notes, strict):
            H = HIDDEN // d
            cases += [Case("grid", spec.name, dtype, d, max(1, TOKENS // N), H, H, N, source)
                      for N in sizes]
    return cases


def long_cases(sources, sizes, dtypes, head_dims, notes: list[str], strict=True) -> list[Case]:
    """B = 1, H = 16, long N."""
    cases = []
    for source in sources:
        spec = api.load(source)
        for dtype, d in spec_configs(spec, dtypes, head_dims, notes, strict):
            cases += [Case("long", spec.name, dtype, d, LONG_BATCH, LONG_HEADS, LONG_HEADS, N, source)
                      for N in sizes]
    return cases


def decode_cases(sources, sizes, dtypes, head_dims, notes: list[str], strict=True,
                 rows=DECODE_ROWS, batch=DECODE_BATCH) -> list[Case]:
    """B = 8 (or `batch`), H = 16 query rows (1, 16) against N keys: split-KV's ground."""
    cases = []
    for source in sources:
        spec = api.load(source)
        for dtype, d in spec_configs(spec, dtypes, head_dims, notes, strict):
            cases += [Case("decode", spec.name, dtype, d, batch, DECODE_HEADS,
                           DECODE_HEADS, N, source, Nq) for Nq in rows for N in sizes]
    return cases


@dataclass(frozen=True)
class Settings:
    peers: tuple[str, ...]      # besides flashgen, which always runs (the ratios need it)
    directions: tuple[str, ...]
    warmup: int = 3
    reps: int = 20
    max_seconds: float = 1.0    # the timed runs of one measurement take at most about this
    settle_seconds: float = SETTLE_SECONDS  # untimed runs first, under the power cap (timing.py)


def _sweep_tiles(source: str, d: int, kv_block: int) -> TileOverride | None:
    """The tiles of a block-size sweep peer (peers.sweep_tiles) on this machine's GPU
    (sm_90a without one, as api.build), or None where the planner refuses them (the runner
    then records why)."""
    arch = device_arch() if torch.cuda.is_available() else "sm_90a"
    try:
        return sweep_tiles(api.load(source), d, kv_block, arch)
    except TileError:
        return None


def _family_fits(source: str, d: int, family: str) -> bool:
    try:
        plan_for(api.load(source), d, TileOverride(family=family))
    except TileError:
        return False
    return True


def build_kernels(cases: list[Case], progress: Progress, kv_blocks: tuple[int, ...] = (),
                  families: tuple[str, ...] = ()) -> dict[tuple[str, str, int], str]:
    """Build (or find in the cache) every flashgen module the cases need, in parallel, and
    those of the block-size sweep's tiles and of the other kernel families. Returns the
    failures of the planner's modules: (source, dtype, d) -> the build error's first line
    (a sweep tile's or a family's failure shows in its own rows)."""
    configs = sorted({(c.source, c.dtype, c.d) for c in cases})
    jobs = {(source, dtype, d, None, None): None for source, dtype, d in configs}
    for source, dtype, d in configs:
        for kv_block in kv_blocks:
            tiles = _sweep_tiles(source, d, kv_block)
            if tiles is not None:
                jobs[(source, dtype, d, tiles.forward, tiles.family)] = None
        for family in families:
            if _family_fits(source, d, family):
                jobs[(source, dtype, d, None, family)] = None
    failed = {}
    start = time.perf_counter()
    # a module is two nvcc processes (forward, backward): half the cores' worth of modules;
    # the progress line below stands for their own build lines
    with quiet(), ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) // 2)) as pool:
        futures = {pool.submit(api.build, source, dtypes=[dtype], head_dims=[d],
                               forward_tile=tile, family=family): (source, dtype, d, tile, family)
                   for source, dtype, d, tile, family in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            error = future.exception()
            source, dtype, d, tile, family = futures[future]
            if error is not None and tile is None and family is None:
                failed[source, dtype, d] = str(error).splitlines()[0]
            progress.update(f"building flashgen kernels {done}/{len(jobs)} "
                            f"({time.perf_counter() - start:.0f} s)")
    progress.finish(f"{len(jobs)} flashgen module(s) ready in {time.perf_counter() - start:.0f} s"
                    + (f", {len(failed)} failed" if failed else ""))
    return failed


def _subject(case: Case, op: api.AttentionOp, device: torch.device) -> Subject:
    spec = op.spec
    dtype = TORCH_DTYPES[case.dtype]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    def randn(heads, rows, dim):
        return torch.randn(case.B, heads, rows, dim, device=device, dtype=dtype,
                           requires_grad=True)
    Nq, Nk = case.q_len, case.N
    q, k, v = (randn(case.H, Nq, case.d), randn(case.Hkv, Nk, case.d),
               randn(case.Hkv, Nk, spec.value_dim_for(case.d)))
    params = example_params(spec, case.B, case.H, Nq, Nk, generator, device)
    layout = example_layout(spec, case.H, Nq, Nk, generator, device, LAYOUT_DENSITY)
    dropout_p = DROPOUT_P if spec.dropout else 0.0
    call = bind(spec, q, k, v, params=params, layout=layout, dropout_p=dropout_p)
    op_kwargs = dict(params, dropout_p=dropout_p, **({"layout": layout} if layout is not None else {}))
    gc.collect()
    torch.cuda.empty_cache()
    return Subject(op, call, op_kwargs, visibility(call), torch.cuda.mem_get_info(device)[0])


def _direction_fn(forward, direction: str, subject: Subject, dout: torch.Tensor):
    if direction == "fwd":
        def run():
            with torch.no_grad():         # inference: nothing kept for a backward pass
                return forward()
        return run
    inputs = (subject.call.q, subject.call.k, subject.call.v)

    def run():
        return torch.autograd.grad(forward(), inputs, dout)
    return run


def _short(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:200]


def _free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()


class _Run:
    """The measurement loop over the cases, writing each row as it is measured."""

    def __init__(self, settings: Settings, results: Results, progress: Progress,
                 build_failures: dict, device: torch.device):
        self.device = device
        self.settings = settings
        self.results = results
        self.progress = progress
        self.build_failures = build_failures
        self.start = time.perf_counter()

    def status(self, text: str) -> None:
        elapsed = int(time.perf_counter() - self.start)
        self.progress.update(f"{text}  [{elapsed // 60}m{elapsed % 60:02d}s]")

    def case(self, index: int, total: int, case: Case) -> None:
        peers = (FLASHGEN, *self.settings.peers)
        todo = [(peer, direction) for peer in peers for direction in self.settings.directions
                if not self.results.has(case.fields(), peer, direction)]
        if not todo:
            return
        where = f"[{index}/{total}] {case.label()}"
        self.status(f"{where}: inputs, visible fraction")
        op = api.compile(case.source)
        try:
            subject = _subject(case, op, self.device)
        except torch.OutOfMemoryError:
            subject = None
        if subject is None:              # outside the except block, which holds the frames
            _free_memory()
            for peer, direction in todo:
                self.record(case, None, peer, direction, status="OOM", note="inputs do not fit")
            return
        call = subject.call
        dout = torch.randn(call.q.shape[:3] + call.v.shape[3:], dtype=call.q.dtype,
                           device=call.q.device)
        for peer in peers:
            directions = [d for p, d in todo if p == peer]
            if directions:
                self.status(f"{where}: {peer} setup")
                self.peer(where, case, subject, peer, directions, dout)
                _free_memory()
        del subject, dout
        _free_memory()

    def peer(self, where, case, subject, peer, directions, dout) -> None:
        failure = self.build_failures.get((case.source, case.dtype, case.d))
        if peer == FLASHGEN and failure:
            for direction in directions:
                self.record(case, subject, peer, direction, status="error", note=failure)
            return
        outcome = None
        try:
            with warnings.catch_warnings():     # compile chatter, off the progress line
                warnings.simplefilter("ignore")
                run = runner(peer, subject)
        except NotExpressible as why:
            outcome = {"status": "n/a", "note": str(why)}
        except torch.OutOfMemoryError:
            outcome = {"status": "OOM", "note": "in setup"}
        except Exception as error:  # noqa: BLE001 (a peer failing to set up is a result)
            outcome = {"status": "error", "note": _short(error)}
        if outcome is not None:
            _free_memory()
            for direction in directions:
                self.record(case, subject, peer, direction, **outcome)
            return
        setup = {"setup_ms": run.setup_ms,
                 "setup_mib": run.setup_bytes / 2**20 if run.setup_ms is not None else None}
        for direction in directions:
            self.status(f"{where}: {peer} {direction}")
            self.record(case, subject, peer, direction, **setup,
                        **self.measure(run, direction, subject, dout))
            _free_memory()

    def measure(self, run, direction, subject, dout) -> dict:
        fn = _direction_fn(run.forward, direction, subject, dout)
        s = self.settings
        # SDPA says why a backend declines only in warnings (the error says "No available
        # kernel"): keep them for the note, and off the progress line
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                start = time.perf_counter()
                fn()                        # compiles (FlexAttention), loads (flashgen)
                torch.cuda.synchronize()
                first_call_s = time.perf_counter() - start
                extra = peak_extra_bytes(fn)
                timing = time_ms(fn, s.warmup, s.reps, s.max_seconds,
                                 settle_seconds=s.settle_seconds)
            except torch.OutOfMemoryError:
                return {"status": "OOM"}
            except Exception as error:  # noqa: BLE001 (an unsupported backend raises: a result)
                reasons = dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught
                                        if str(w.message).strip())
                return {"status": "error", "note": "; ".join([_short(error), *reasons])[:300]}
        return {"status": "ok", "ms": timing.median_ms, "ms_q1": timing.q1_ms,
                "ms_q3": timing.q3_ms, "reps": timing.reps, "extra_mib": extra / 2**20,
                "first_call_s": first_call_s}

    def record(self, case: Case, subject: Subject | None, peer: str, direction: str, **values):
        row = {**case.fields(), "peer": peer, "direction": direction, **values}
        if subject is not None:
            spec = subject.op.spec
            fraction = subject.visibility.fraction
            row["visible"] = fraction
            if values.get("status") == "ok":
                flops = attention_flops(case.B, case.H, case.q_len, case.N, case.d,
                                        spec.value_dim_for(case.d), fraction, direction)
                row["tflops"] = tflops(flops, values["ms"])
        self.results.add(row)


def run(cases: list[Case], settings: Settings, results: Results, progress: Progress) -> None:
    """Build the kernels, then measure every case not already in `results`."""
    peers = (FLASHGEN, *settings.peers)
    todo = [c for c in cases if not all(results.has(c.fields(), peer, direction)
                                        for peer in peers for direction in settings.directions)]
    kv_blocks = tuple(int(p[len(SWEEP_PREFIX):]) for p in settings.peers
                      if p.startswith(SWEEP_PREFIX))
    families = tuple(p[len(FAMILY_PREFIX):] for p in settings.peers
                     if p.startswith(FAMILY_PREFIX))
    failures = build_kernels(todo, progress, kv_blocks, families) if todo else {}
    loop = _Run(settings, results, progress, failures,
                torch.device("cuda", torch.cuda.current_device()))
    for index, case in enumerate(todo, 1):
        loop.case(index, len(todo), case)
    elapsed = time.perf_counter() - loop.start
    skipped = len(cases) - len(todo)
    progress.finish(f"{len(todo)} case(s) measured in {elapsed / 60:.1f} min"
                    + (f"; {skipped} already in {results.csv_path}" if skipped else ""))
