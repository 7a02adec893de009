"""A per-unit timeline of the warp-specialised forward (templates/kernels/forward_sm90_ws.cuh):
where a CTA's time goes beyond its tiles (PERF.md, issue 8's seventeenth step).

    PYTHONPATH=$PWD python tests/gpu/timeline.py [--specs dense,causal] [--sizes 2048,8192]
        [--head-dim 128] [--families wgmma_ws] [--copy /tmp/timeline_tree]

It copies the tree (flashgen, templates, grammar) to --copy, patches the copy's kernel
(`patch`) and runs the measurement there in a child process with its own build cache, so
that the tree's kernels and their cache are never touched. In the patched kernel each
consumer stamps `%globaltimer` at six points of each unit and writes them, with the
unit's tile count and `%smid`, over the first 8 lse rows of its 64 (as raw uint32): the
stamps cost a few instructions and nothing in the loop. Per (spec, N, family) it prints
medians over all units, in us:

    Q      unit start -> its Q rows in shared memory
    firstS Q ready -> the first Q K^T done
    soft   the first tile's softmax
    tile   each later tile (its Q K^T, softmax and the previous P V, in turns)
    epi    the last P V done -> O stored, consumer 0 / the last consumer
    lag    the last consumer's end after consumer 0's
    unit   first start -> last end of the unit's consumers
    gap    one unit's end -> the next unit's start on the same SM
and the kernel's span against the SMs' mean busy time (their difference: idle SMs).
The timer ticks in 0.256 us steps on an H200: medians over thousands of units resolve
less than a tick per unit, single values do not.
"""
import argparse
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
KERNEL = "templates/kernels/forward_sm90_ws.cuh"

STAMPS = '''
// timeline.py's stamps: the global timer's low 32 bits (ns) and the SM
__device__ __forceinline__ uint32_t fg_now() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return uint32_t(t);
}
__device__ __forceinline__ uint32_t fg_smid() {
  uint32_t t;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(t));
  return t;
}
'''

# (anchor, replacement) pairs, each anchor found exactly once in the kernel's source
EDITS = [
    ("namespace fg {\n", "namespace fg {\n" + STAMPS),
    ("  int q_slot = 0;", "  uint32_t tl[8] = {};\n  int q_slot = 0;"),
    ("    const Cta cta(a, BM);\n",
     "    tl[0] = fg_now(), tl[7] = fg_smid();\n    const Cta cta(a, BM);\n"),
    ("      bar_sync(kQBarrier + consumer, 128);\n    }\n",
     "      bar_sync(kQBarrier + consumer, 128);\n    }\n    tl[1] = fg_now();\n"),
    ("      mbarrier_arrive(&q_empty[q_slot * Tiles::kConsumers + consumer]);\n",
     "      mbarrier_arrive(&q_empty[q_slot * Tiles::kConsumers + consumer]);\n"
     "    if constexpr (kKind == kFirstTile) tl[2] = fg_now();\n    ++tl[6];\n"),
    ("    pending = stage;\n    ++i;\n  };",
     "    pending = stage;\n    ++i;\n    if constexpr (kKind == kFirstTile) tl[3] = fg_now();\n  };"),
    ("      last_pv();\n    }\n    // through Q's buffer",
     "      last_pv();\n    }\n    tl[4] = fg_now();\n    // through Q's buffer"),
    ("        kQBarrier + consumer);\n  } else {",
     "        kQBarrier + consumer);\n    tl[5] = fg_now();\n"
     "    if ((threadIdx.x & 127) == 0) {  // over lse rows q0 + 64 c .. + 7 (a padded batch)\n"
     "      const int64_t at = (int64_t(b) * n.heads + h) * n.q_len + q0 + 64 * consumer;\n"
     "#pragma unroll\n"
     "      for (int e = 0; e < 8; ++e) reinterpret_cast<uint32_t*>(a.lse)[at + e] = tl[e];\n"
     "    }\n  } else {"),
]


def patch(source: str) -> str:
    """The kernel's source with the stamps; ValueError names an anchor the kernel lost."""
    for anchor, replacement in EDITS:
        if source.count(anchor) != 1:
            raise ValueError(f"{KERNEL} has {source.count(anchor)} copies of the anchor "
                             f"{anchor.strip()[:60]!r}; update tests/gpu/timeline.py")
        source = source.replace(anchor, replacement)
    return source


def copy_tree(dst: pathlib.Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    for part in ("flashgen", "templates", "grammar"):
        shutil.copytree(ROOT / part, dst / part,
                        ignore=shutil.ignore_patterns("__pycache__", "results"))
    kernel = dst / KERNEL
    kernel.write_text(patch(kernel.read_text()))


def measure(spec: str, family: str, N: int, d: int) -> str:
    """One row of the table (runs in the patched copy)."""
    import numpy as np
    import torch
    import flashgen
    from flashgen.runtime import launch

    B, H = max(1, 16384 // N), 2048 // d
    op = flashgen.compile(spec) if family == "plain" else flashgen.compile(spec, family=family)
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with torch.no_grad():
        for _ in range(3):
            _, lse = op(q, k, v, return_lse=True)
        torch.cuda.synchronize()
    forward = launch.variant(op.key).plan(d, launch._arch(q.device.index)).forward
    if not forward.producer or forward.persistent:
        return f"{spec} N={N} {family}: the plan is not the grid's warp-specialised forward"
    bm, consumers = forward.block_m, forward.block_m // 64
    stamps = lse.contiguous().view(torch.int32).cpu().numpy().astype(np.int64)
    stamps = stamps.reshape(B * H, N)[:, : N // bm * bm].reshape(B * H, N // bm, consumers, 64)
    ev = stamps[..., :8].reshape(-1, consumers, 8)  # [units, consumers, event]
    t = (ev[:, :, :6] - ev[:, :, 0].min()) & 0xFFFFFFFF
    tiles, sm = ev[:, 0, 6], ev[:, 0, 7]
    first, last = t[:, 0], t[:, -1]
    start, end = t[:, :, 0].min(1), t[:, :, 5].max(1)
    gaps = []
    for s in np.unique(sm):
        units = np.where(sm == s)[0]
        units = units[np.argsort(start[units])]
        gaps += list(start[units[1:]] - end[units[:-1]])

    def med(x):
        return float(np.median(x)) / 1000

    span, busy = (end.max() - start.min()) / 1000, (end - start).sum() / 1000 / len(np.unique(sm))
    return (f"{spec:8s} N={N:5d} {family:20s} span {span:7.1f} busy {busy:7.1f} | "
            f"tiles {np.median(tiles):3.0f} Q {med(first[:, 1] - first[:, 0]):.2f} "
            f"firstS {med(first[:, 2] - first[:, 1]):.2f} soft {med(first[:, 3] - first[:, 2]):.2f} "
            f"tile {med((first[:, 4] - first[:, 3]) / np.maximum(tiles - 1, 1)):.2f} "
            f"epi {med(first[:, 5] - first[:, 4]):.2f} / {med(last[:, 5] - last[:, 4]):.2f} "
            f"lag {med(last[:, 5] - first[:, 5]):.2f} unit {med(end - start):.2f} "
            f"gap {med(np.array(gaps)):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", default="dense,causal")
    parser.add_argument("--sizes", default="2048,8192")
    parser.add_argument("--head-dim", type=int, default=128)
    # the grid's kernel (the default at d = 256; family wgmma_ws below): the persistent one
    # carries a unit's O into the next unit's first step, its units overlap, and these
    # stamps, one set per unit, are not placed for it
    parser.add_argument("--families", default="wgmma_ws")
    parser.add_argument("--copy", default="/tmp/flashgen_timeline_tree")
    parser.add_argument("--measure", nargs=4, metavar=("SPEC", "FAMILY", "N", "D"),
                        help=argparse.SUPPRESS)  # the child process, inside the copy
    args = parser.parse_args()
    if args.measure:
        spec, family, N, d = args.measure
        print(measure(spec, family, int(N), int(d)), flush=True)
        return
    copy = pathlib.Path(args.copy)
    copy_tree(copy)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")]),
               FLASHGEN_CACHE_DIR=str(copy / ".cache"))
    env.pop("FLASHGEN_POISON", None)  # the stamps replace lse; NaN-filled outputs are moot
    for spec in args.specs.split(","):
        for N in map(int, args.sizes.split(",")):
            for family in args.families.split(","):
                subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--measure",
                                spec, family, str(N), str(args.head_dim)], env=env, check=False)


if __name__ == "__main__":
    main()
