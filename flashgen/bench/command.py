"""`flashgen bench` and `flashgen bench-plot`: from arguments to cases and settings, the
run, and its report. Argument mistakes are found before anything touches a GPU."""
from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import api
from . import BenchError, report
from .flops import DIRECTIONS
from ..plan.tiles import FAMILIES
from .peers import PEERS, family_peer, sweep_peer
from .suite import (
    DECODE_BATCH,
    DECODE_ROWS,
    DECODE_SIZES,
    DECODE_SPECS,
    GRID_SIZES,
    LONG_SIZES,
    LONG_SPECS,
    QUICK_SIZES,
    SETTLE_SECONDS,
    Case,
    Settings,
    decode_cases,
    grid_cases,
    long_cases,
)

DTYPES = ("bf16", "fp16")
HEAD_DIMS = (64, 128)
QUICK_HEAD_DIMS = (128,)
QUICK_WARMUP, QUICK_REPS = 1, 5


def add_bench_arguments(p) -> None:
    p.add_argument("specs", nargs="*", metavar="SPEC",
                   help="shipped spec names or spec files (or --suite)")
    p.add_argument("--suite", action="store_true",
                   help=f"every shipped spec (with --long: {', '.join(LONG_SPECS)}; with "
                        f"--decode: {', '.join(DECODE_SPECS)})")
    p.add_argument("--long", action="store_true",
                   help="the long-N sweep (B=1, H=16, N up to 131072) instead of the size grid")
    p.add_argument("--decode", action="store_true",
                   help=f"the decoding sweep: {'/'.join(map(str, DECODE_ROWS))} query rows "
                        f"against N = {DECODE_SIZES[0]}..{DECODE_SIZES[-1]} keys, B=8, H=16, "
                        "forward (split-KV)")
    p.add_argument("--rows", help="--decode: query rows, e.g. 1,4 (default "
                                  f"{','.join(map(str, DECODE_ROWS))})")
    p.add_argument("--batch", help=f"--decode: the batch B (default {DECODE_BATCH}; 1 or 2 "
                                   "leave most SMs to split-KV)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: N={','.join(map(str, QUICK_SIZES))}, bf16, d=128, "
                        f"{QUICK_REPS} reps")
    p.add_argument("--sizes", help="sequence lengths N, e.g. 512,1024 (default: grid "
                                   f"{GRID_SIZES[0]}..{GRID_SIZES[-1]}, long "
                                   f"{LONG_SIZES[0]}..{LONG_SIZES[-1]})")
    p.add_argument("--dtype", help="bf16,fp16 (default: both; --long and --quick: bf16)")
    p.add_argument("--head-dim", help="64,128 (default; --quick: 128)")
    p.add_argument("--directions",
                   help=f"{','.join(DIRECTIONS)} (default: both; --decode: fwd)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"{','.join(PEERS)} (default: all; flashgen always runs)")
    p.add_argument("--kv-blocks", help="the block-size sweep: also run flashgen with these "
                                       "forward KV tiles, e.g. 64,128,176 (peers flashgen@kvBN)")
    p.add_argument("--families", help=f"also run flashgen on these kernel families, e.g. mma "
                                      f"(of {', '.join(FAMILIES)}; peers flashgen/FAMILY)")
    p.add_argument("--out", help="results folder (default: flashgen/bench/results/DATE-GPU); "
                                 "a folder with results resumes: measured rows are kept")
    p.add_argument("--warmup", type=int, help="untimed runs per measurement (default 3)")
    p.add_argument("--settle", type=float,
                   help="seconds of untimed runs before each measurement, so every subject is "
                        f"timed under the GPU's power cap (default {SETTLE_SECONDS}; --quick: 0)")
    p.add_argument("--reps", type=int, help="timed runs per measurement, at most (default 20)")


def _names(text: str, valid, what: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    for name in names:
        if name not in valid:
            raise BenchError(f"unknown {what} '{name}'; valid: {', '.join(valid)}")
    if not names:
        raise BenchError(f"no {what} given; valid: {', '.join(valid)}")
    return names


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise BenchError(f"{what} must be integers separated by commas, got '{text}'") from None
    if any(x <= 0 for x in values):
        raise BenchError(f"{what} must be positive, got '{text}'")
    return values


@dataclass
class Plan:
    cases: list[Case]
    settings: Settings
    notes: list[str]


def make_plan(args) -> Plan:
    """The cases and settings that the arguments ask for (BenchError if they cannot)."""
    peers = _names(args.peers, PEERS, "peer")
    if args.kv_blocks:
        blocks = _ints(args.kv_blocks, "--kv-blocks")
        # the kernel family decides which it takes (plan/tiles.py check_override: powers of
        # two, and FlashAttention-3's 80, 96, 160, 176, 192 for the warp-specialised
        # forward); a tile it refuses is a peer that cannot run
        bad = [b for b in blocks if b < 16 or b > 256 or b % 16]
        if bad:
            raise BenchError(f"--kv-blocks: {', '.join(map(str, bad))} is not a multiple of 16 "
                             f"from 16 to 256")
        peers += tuple(sweep_peer(b) for b in blocks)
    if args.families:
        peers += tuple(family_peer(f) for f in _names(args.families, FAMILIES, "family"))
    # decoding is inference: forward only unless asked
    default_directions = "fwd" if args.decode else ",".join(DIRECTIONS)
    directions = _names(args.directions or default_directions, DIRECTIONS, "direction")
    if args.specs and args.suite:
        raise BenchError("give SPECs or --suite, not both")
    if args.long and args.decode:
        raise BenchError("give --long or --decode, not both")
    if args.rows and not args.decode:
        raise BenchError("--rows sets the query rows of --decode")
    if args.batch and not args.decode:
        raise BenchError("--batch sets the batch of --decode")
    if args.suite:
        sources = list(LONG_SPECS if args.long else DECODE_SPECS if args.decode
                       else api.shipped())
    elif args.specs:
        sources = list(args.specs)
    else:
        raise BenchError("name the specs to bench (`flashgen list` shows the shipped ones), "
                         "or pass --suite")
    one_dtype = args.long or args.decode or args.quick
    dtypes = _names(args.dtype, DTYPES, "dtype") if args.dtype else DTYPES[:1] if one_dtype else DTYPES
    head_dims = (_ints(args.head_dim, "--head-dim") if args.head_dim
                 else QUICK_HEAD_DIMS if args.quick else HEAD_DIMS)
    sizes = (_ints(args.sizes, "--sizes") if args.sizes
             else QUICK_SIZES if args.quick else LONG_SIZES if args.long
             else DECODE_SIZES if args.decode else GRID_SIZES)
    warmup = args.warmup if args.warmup is not None else QUICK_WARMUP if args.quick else 3
    reps = args.reps if args.reps is not None else QUICK_REPS if args.quick else 20
    settle = args.settle if args.settle is not None else 0.0 if args.quick else SETTLE_SECONDS
    if warmup < 0 or reps < 3:
        raise BenchError("--warmup must be >= 0 and --reps >= 3 (the median of fewer says little)")
    if settle < 0:
        raise BenchError("--settle must be >= 0 seconds")
    notes: list[str] = []
    strict = bool(args.dtype or args.head_dim)
    if args.decode:
        rows = _ints(args.rows, "--rows") if args.rows else DECODE_ROWS
        batch = _ints(args.batch, "--batch") if args.batch else [DECODE_BATCH]
        if len(batch) != 1 or batch[0] < 1:
            raise BenchError("--batch takes one count >= 1, e.g. --batch 1")
        cases = decode_cases(sources, sizes, dtypes, head_dims, notes, strict, rows, batch[0])
    else:
        make = long_cases if args.long else grid_cases
        cases = make(sources, sizes, dtypes, head_dims, notes, strict)
    if not cases:
        raise BenchError("no case to run: " + "; ".join(notes))
    return Plan(cases, Settings(peers, directions, warmup, reps, settle_seconds=settle), notes)


def _require_gpu():
    import torch
    if not torch.cuda.is_available():
        raise BenchError(f"flashgen bench needs a CUDA GPU and torch {torch.__version__} sees "
                         "none (`flashgen bench-plot DIR` makes plots from results without one)")
    return torch.cuda.get_device_name()


def bench(args) -> int:
    from ..progress import Progress
    from .suite import run
    plan = make_plan(args)
    gpu = _require_gpu()
    folder = Path(args.out) if args.out else report.default_folder(gpu)
    meta_path = folder / "meta.json"
    if meta_path.exists():
        import json
        earlier = json.loads(meta_path.read_text()).get("gpu")
        if earlier and earlier != gpu:
            raise BenchError(f"{folder} holds results measured on {earlier}, this is {gpu}; "
                             "choose another --out")
    progress = Progress()
    for note in plan.notes:
        progress.finish(f"note: {note}")
    meta = report.collect_meta("flashgen " + shlex.join(sys.argv[1:]))
    meta["settings"] = {**asdict(plan.settings), "cases": len(plan.cases)}
    report.write_meta(folder, meta)
    results = report.Results(folder)
    progress.finish(f"results in {folder}")
    try:
        run(plan.cases, plan.settings, results, progress)
    except KeyboardInterrupt:
        progress.finish(f"interrupted: the rows measured so far are in {results.csv_path}; "
                        "the same command with --out continues")
        return 130
    rows = list(results.rows.values())
    print(report.table(rows))
    _plot(rows, folder)
    print(f"\n{results.csv_path}")
    return 0


def _plot(rows, folder: Path) -> None:
    try:
        written = report.plot(rows, folder)
    except ImportError:
        print(report.plot_hint(folder), file=sys.stderr)
        return
    print(f"\n{len(written)} plot(s) in {folder / 'plots'}")


def bench_plot(args) -> int:
    folder = Path(args.folder)
    csv_path = folder / "results.csv"
    if not csv_path.is_file():
        raise BenchError(f"no results.csv in {folder}")
    rows = report.read_rows(csv_path)
    print(report.table(rows))
    try:
        written = report.plot(rows, folder)
    except ImportError:
        raise BenchError("bench-plot needs matplotlib: pip install 'flashgen[bench]'") from None
    print(f"\n{len(written)} plot(s) in {folder / 'plots'}")
    return 0
