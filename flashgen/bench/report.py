"""A run's results folder: results.csv (one row per case, peer and direction, written as
measured), meta.json (GPU, driver, versions, date, commands), the terminal table, and
PNG plots (matplotlib, optional: `flashgen bench-plot DIR` makes them later, anywhere)."""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import re
import subprocess
from collections import defaultdict
from pathlib import Path

from .flops import DIRECTIONS
from .peers import FAMILY_PREFIX, FLASHGEN, PEERS, SWEEP_PREFIX

CASE_FIELDS = ("sweep", "spec", "dtype", "d", "B", "H", "Hkv", "N", "Nq")  # N: keys
KEY_FIELDS = (*CASE_FIELDS, "peer", "direction")
CSV_FIELDS = (*KEY_FIELDS, "status", "note", "ms", "ms_q1", "ms_q3", "reps", "tflops",
              "flashgen_ratio", "visible", "extra_mib", "setup_ms", "setup_mib", "first_call_s")
_INTS = {"d", "B", "H", "Hkv", "N", "Nq", "reps"}
_FLOATS = {"ms", "ms_q1", "ms_q3", "tflops", "flashgen_ratio", "visible", "extra_mib",
           "setup_ms", "setup_mib", "first_call_s"}
PEER_ORDER = (FLASHGEN, *PEERS)
RESULTS_ROOT = Path(__file__).resolve().parent / "results"
FLOP_CONVENTION = ("forward 4*B*H*Nq*Nk*d (2*B*H*Nq*Nk*(d+dv)) times the visible fraction; "
                   "backward 2.5x, forward+backward 3.5x forward; TFLOP/s = FLOPs / median time")


def _key(row: dict) -> tuple:
    return tuple(row[f] for f in KEY_FIELDS)


def _typed(row: dict) -> dict:
    out = {}
    for name, text in row.items():
        if text in ("", None):
            out[name] = None
        elif name in _INTS:
            out[name] = int(text)
        elif name in _FLOATS:
            out[name] = float(text)
        else:
            out[name] = text
    return out


def read_rows(csv_path: Path) -> list[dict]:
    """The rows of a results.csv, typed; a key measured again keeps its last row."""
    with open(csv_path, newline="") as f:
        rows = {}
        for row in csv.DictReader(f):
            row = _typed(row)
            if row.get("Nq") is None:      # a folder from before the decode sweep: Nq = N
                row["Nq"] = row["N"]
            rows[_key(row)] = row
    return list(rows.values())


def _cell(value) -> str:
    if value is None:
        return ""
    return format(value, ".6g") if isinstance(value, float) else str(value)


class Results:
    """The rows of a results folder: those already in its CSV (a run resumes) and new
    ones, each appended to the CSV as it comes, so an interrupted run loses nothing."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.csv_path = self.folder / "results.csv"
        self.rows: dict[tuple, dict] = {}
        if self.csv_path.exists():
            self.rows = {_key(r): r for r in read_rows(self.csv_path)}

    def has(self, case_fields: dict, peer: str, direction: str) -> bool:
        """Whether the case is measured already (an error is measured again)."""
        row = self.rows.get(_key({**case_fields, "peer": peer, "direction": direction}))
        return row is not None and row["status"] != "error"

    def add(self, row: dict) -> None:
        row = {f: row.get(f) for f in CSV_FIELDS}
        if row["peer"] != FLASHGEN and row["status"] == "ok":
            ours = self.rows.get(_key({**row, "peer": FLASHGEN}))
            if ours is not None and ours["status"] == "ok":
                row["flashgen_ratio"] = row["ms"] / ours["ms"]
        self.rows[_key(row)] = row
        self.folder.mkdir(parents=True, exist_ok=True)
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(CSV_FIELDS)
            writer.writerow([_cell(row[name]) for name in CSV_FIELDS])


# ------------------------------------------------------------------ meta.json


def _run(command: list[str], cwd=None) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=cwd,
                                check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def gpu_slug(name: str) -> str:
    """A folder-name form of a GPU name: "NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3"."""
    name = re.sub(r"^nvidia\s+", "", name.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def default_folder(gpu_name: str, now: datetime.datetime | None = None) -> Path:
    now = now or datetime.datetime.now()
    return RESULTS_ROOT / f"{now:%Y-%m-%d-%H%M}-{gpu_slug(gpu_name)}"


def collect_meta(command: str) -> dict:
    """Where and with what a run measured: GPU, driver, versions, date, the command."""
    import torch
    meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "flop_convention": FLOP_CONVENTION}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        meta.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    sm_count=props.multi_processor_count,
                    compute_capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version())
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        meta["driver"] = driver.splitlines()[0] if driver else None
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        pass
    package = Path(__file__).resolve().parent
    # FLASHGEN_COMMIT names the commit where the checkout's git metadata is not the
    # source's (a copied working tree, as on a remote GPU machine)
    commit = os.environ.get("FLASHGEN_COMMIT") or _run(["git", "rev-parse", "HEAD"], cwd=package)
    if os.environ.get("FLASHGEN_COMMIT"):
        meta["flashgen_commit"] = commit
    elif commit:
        dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=package)
        meta["flashgen_commit"] = commit + ("-dirty" if dirty else "")
    meta["commands"] = [command]
    return meta


def write_meta(folder: Path, meta: dict) -> dict:
    """Write meta.json; a resumed folder keeps its first date and lists every command."""
    path = Path(folder) / "meta.json"
    if path.exists():
        old = json.loads(path.read_text())
        meta = {**meta, "date": old.get("date", meta["date"]),
                "commands": old.get("commands", []) + meta["commands"]}
    Path(folder).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ------------------------------------------------------------------ the table


def _cases(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(case fields..., direction) -> peer -> row, in a readable order."""
    grouped = defaultdict(dict)
    for row in rows:
        grouped[(*(row[f] for f in CASE_FIELDS), row["direction"])][row["peer"]] = row
    order = {d: i for i, d in enumerate(DIRECTIONS)}
    return dict(sorted(grouped.items(),
                       key=lambda kv: (kv[0][0] != "grid", *kv[0][1:-1], order.get(kv[0][-1], 9))))


def _status(row: dict | None) -> str | None:
    """The cell of a row that has no number, or None when it has one."""
    if row is None:
        return "-"
    if row["status"] != "ok":
        return {"error": "err"}.get(row["status"], row["status"])
    return None


def _throughput_cell(row, ours) -> str:
    text = _status(row)
    if text is not None:
        return text
    if row["peer"] == FLASHGEN or _status(ours) is not None:
        return f"{row['tflops']:.0f}"
    return f"{row['tflops']:.0f} {ours['tflops'] / row['tflops']:.2f}x"


def _decode_cell(row, ours) -> str:
    text = _status(row)
    if text is not None:
        return text
    if row is ours or _status(ours) is not None:
        return f"{row['ms'] * 1e3:.4g} us"
    return f"{row['ms'] * 1e3:.4g} us {row['ms'] / ours['ms']:.2f}x"


def _long_cell(row, ours) -> str:
    text = _status(row)
    return text if text is not None else f"{row['ms']:.4g} ms {row['extra_mib']:.0f} MiB"


def _format(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(x) for x in column) for column in zip(header, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    """The terminal table: one line per case and direction, a column per peer. The size
    grid shows TFLOP/s and flashgen's speed-up over each peer (x > 1: flashgen faster);
    the long sweep shows time and peak extra memory."""
    sections = []
    for sweep, cell, what in (("grid", _throughput_cell,
                               "TFLOP/s (FlashAttention convention) and flashgen's speed-up"),
                              ("long", _long_cell, "median time and peak extra memory"),
                              ("decode", _decode_cell,
                               "median time and flashgen's speed-up (N: keys, Nq: query rows)")):
        cases = {k: v for k, v in _cases(rows).items() if k[0] == sweep}
        if not cases:
            continue
        present = {p for by_peer in cases.values() for p in by_peer}
        peers = [p for p in PEER_ORDER if p in present] + sorted(
            p for p in present if p.startswith(FAMILY_PREFIX))
        header = ["spec", "dtype", "d", "N", *(["Nq"] if sweep == "decode" else []), "BxH",
                  "visible", "dir", *peers]
        lines = []
        for (_, spec, dtype, d, B, H, _, N, Nq, direction), by_peer in cases.items():
            ours = by_peer.get(FLASHGEN)
            visible = next((r["visible"] for r in by_peer.values() if r["visible"] is not None), None)
            lines.append([spec, dtype, str(d), str(N), *([str(Nq)] if sweep == "decode" else []),
                          f"{B}x{H}", "" if visible is None else f"{visible:.3f}", direction,
                          *(cell(by_peer.get(p), ours) for p in peers)])
        sections.append(f"{sweep}: {what}\n{_format(header, lines)}")
    sweep = _kv_sweep_table(rows)
    if sweep:
        sections.append(sweep)
    notes = sorted({f"{r['peer']} {r['status']}: {r['note']}" for r in rows
                    if r["status"] != "ok" and r.get("note")})
    if notes:
        sections.append("why not:\n" + "\n".join(f"  {n}" for n in notes))
    return "\n\n".join(sections)


def _kv_block(peer: str) -> int | None:
    """The forward KV tile of a block-size sweep peer (flashgen@kvBN), else None."""
    return int(peer[len(SWEEP_PREFIX):]) if peer.startswith(SWEEP_PREFIX) else None


def _kv_sweep_table(rows: list[dict]) -> str:
    """The FlashAttention paper's block-size sweep: per case and direction, median time at
    each forward KV tile, and its ratio to the planner's choice (flashgen's own row)."""
    cases = {k: v for k, v in _cases(rows).items()
             if any(_kv_block(p) is not None for p in v)}
    if not cases:
        return ""
    blocks = sorted({_kv_block(p) for v in cases.values() for p in v} - {None})
    header = ["spec", "dtype", "d", "N", "dir", "planner", *(f"kv{b}" for b in blocks)]
    lines = []
    for (_, spec, dtype, d, _, _, _, N, _, direction), by_peer in cases.items():
        ours = by_peer.get(FLASHGEN)
        planner = _status(ours) or f"{ours['ms']:.3g} ms"
        cells = []
        for b in blocks:
            row = by_peer.get(SWEEP_PREFIX + str(b))
            text = _status(row)
            if text is None:
                text = f"{row['ms']:.3g} ms"
                if _status(ours) is None:
                    text += f" {row['ms'] / ours['ms']:.2f}x"
            cells.append(text)
        lines.append([spec, dtype, str(d), str(N), direction, planner, *cells])
    return ("kv-block sweep: median time at each forward KV tile (x: time / the planner's)\n"
            + _format(header, lines))


# ------------------------------------------------------------------ plots


def plot(rows: list[dict], folder: Path) -> list[Path]:
    """PNGs under folder/plots: per (spec, dtype), TFLOP/s against N per peer (a panel per
    head dim and direction); per long-sweep (spec, dtype, d), peak extra memory and time
    against N. Needs matplotlib (ImportError otherwise)."""
    from matplotlib.figure import Figure
    out = Path(folder) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    ok = [r for r in rows if r["status"] == "ok"]
    grid = defaultdict(list)
    long = defaultdict(list)
    decode = defaultdict(list)
    for r in ok:
        if r["sweep"] == "grid":
            grid[(r["spec"], r["dtype"])].append(r)
        elif r["sweep"] == "decode":
            decode[(r["spec"], r["dtype"], r["d"], r["B"])].append(r)
        else:
            long[(r["spec"], r["dtype"], r["d"])].append(r)
    for (spec, dtype), group in sorted(grid.items()):
        fig, panels = _panels(group)
        for ax, d, direction, chosen in panels:
            _lines(ax, chosen, "tflops")
            ax.set_title(f"{spec} {dtype} d={d} {direction}")
            ax.set_ylabel("TFLOP/s")
        written.append(_save(fig, out / f"{spec}_{dtype}.png"))
        swept = [r for r in group if _kv_block(r["peer"]) is not None]
        if swept:
            written.append(_plot_kv_sweep(spec, dtype, swept, out))
    for (spec, dtype, d), group in sorted(long.items()):
        fig = Figure(figsize=(11, 4), layout="constrained")
        memory, time = fig.subplots(1, 2)
        for direction, style in zip(DIRECTIONS, ("-", "--")):
            chosen = [r for r in group if r["direction"] == direction]
            _lines(memory, chosen, "extra_mib", style, f" {direction}")
            _lines(time, chosen, "ms", style, f" {direction}")
        for ax, label in ((memory, "peak extra memory (MiB)"), (time, "median time (ms)")):
            ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_title(f"{spec} {dtype} d={d}, B=1 H={group[0]['H']}")
        written.append(_save(fig, out / f"long_{spec}_{dtype}_d{d}.png"))
    for (spec, dtype, d, B), group in sorted(decode.items()):
        counts = sorted({r["Nq"] for r in group})
        fig = Figure(figsize=(5.5 * len(counts), 4), layout="constrained")
        for ax, nq in zip(fig.subplots(1, len(counts), squeeze=False)[0], counts):
            _lines(ax, [r for r in group if r["Nq"] == nq], "ms")
            ax.set_yscale("log")
            ax.set_xlabel("N (keys)")
            ax.set_ylabel("median time (ms)")
            ax.set_title(f"{spec} {dtype} d={d}, decoding {nq} row(s), "
                         f"B={group[0]['B']} H={group[0]['H']}")
        written.append(_save(fig, out / f"decode_{spec}_{dtype}_d{d}_B{B}.png"))
    return written


def _panels(rows: list[dict]):
    """A figure with a panel per head dim (down) and direction (across), and for each
    panel (ax, d, direction, its rows)."""
    from matplotlib.figure import Figure
    dims = sorted({r["d"] for r in rows})
    directions = [d for d in DIRECTIONS if any(r["direction"] == d for r in rows)]
    fig = Figure(figsize=(5.5 * len(directions), 4 * len(dims)), layout="constrained")
    axes = fig.subplots(len(dims), len(directions), squeeze=False)
    return fig, [(axes[i][j], d, direction,
                  [r for r in rows if r["d"] == d and r["direction"] == direction])
                 for i, d in enumerate(dims) for j, direction in enumerate(directions)]


def _plot_kv_sweep(spec: str, dtype: str, rows: list[dict], out: Path) -> Path:
    """Median time against the forward KV tile, a line per N: the paper's
    runtime-vs-block-size figure for this spec."""
    fig, panels = _panels(rows)
    for ax, d, direction, chosen in panels:
        for N in sorted({r["N"] for r in chosen}):
            xs, ys = zip(*sorted((_kv_block(r["peer"]), r["ms"]) for r in chosen if r["N"] == N))
            ax.plot(xs, ys, marker="o", label=f"N={N}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("forward KV tile (keys)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"{spec} {dtype} d={d} {direction}: time vs KV block")
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
    return _save(fig, out / f"kvblocks_{spec}_{dtype}.png")


def _lines(ax, rows: list[dict], metric: str, style: str = "-", suffix: str = "") -> None:
    for peer in PEER_ORDER:
        points = sorted((r["N"], r[metric]) for r in rows if r["peer"] == peer)
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, style, marker="o", label=peer + suffix,
                    linewidth=2.5 if peer == FLASHGEN else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N")
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def plot_hint(folder: Path) -> str:
    return (f"matplotlib is not installed here: no plots. Make them on any machine with "
            f"`pip install 'flashgen[bench]'` and `flashgen bench-plot {folder}`")
