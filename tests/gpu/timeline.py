"""A per-unit timeline of the warp-specialised forward (templates/kernels/forward_sm90_ws.cuh):
where a unit's time goes beyond its tiles (PERF.md, issue 8's seventeenth and twenty-first
steps).

    PYTHONPATH=$PWD python tests/gpu/timeline.py [--specs dense,causal] [--sizes 2048,8192]
        [--head-dim 128] [--families wgmma_ws,wgmma_ws_persistent] [--copy /tmp/timeline_tree]
        [--producer] [--store]

It copies the tree (flashgen, templates, grammar) to --copy (+ "_persistent" for the
persistent kernel), patches the copy's kernel (`patch`) and runs the measurement there in
a child process with a build cache of its own, so that the tree's kernels and their cache
are never touched. The stamps read `%globaltimer` and cost a few instructions each.

The grid's kernel (family wgmma_ws, EDITS): each consumer stamps six points of its CTA
and writes them, with the tile count and `%smid`, over the first 8 lse rows of its 64 (as
raw uint32). Per (spec, N) it prints medians over the CTAs, in us:

    Q      start -> its Q rows in shared memory
    firstS Q ready -> the first Q K^T done
    soft   the first tile's softmax
    tile   each later tile (its Q K^T, softmax and the previous P V, in turns)
    epi    the last P V done -> O stored, consumer 0 / the last consumer
    lag    the last consumer's end after consumer 0's
    unit   first start -> last end of the CTA's consumers
    gap    one CTA's end -> the next one's start on the same SM

The persistent kernel (family wgmma_ws_persistent, PERSISTENT_EDITS): a unit's O is
stored under the next unit's first Q K^T, so its stamps go to words after the tickets
int (TL_WORDS per unit and consumer). Per (spec, N) it prints consumer 0's means over the
units, in us: `unit` (consumer 0 / the last consumer), and of the unit's first step the
waits for its Q rows (`Q`), its first K tile (`K`: the consumer's `own` work on the
unit, the first step's classifying of the `next` tile, then the wait for the `data`) and
its turn (`turn`), the carried
P V, the unit before's O store (`store`), `firstS` (turn -> first Q K^T done, the two
before included) and `soft`; `tile` is each later tile (weighted over the units, one-tile
units left out) and `beyond` a unit's time past its tiles at that rate; then per tile
the unit's summed waits for K, for turns and for its Q K^Ts. Last, with --producer, the
producer's side of a unit's first K tile: `stage` (from having the unit's card to
issuing that tile: `row`, the card to the loads, and the wait for the stage), `lead` (issued this long before
consumer 0 had its Q rows; < 0: after), `flight` (issue -> consumer 0's wait for it
ends; also over the units where it waited two ticks or more) and `Qslot` (after the
issue, the producer's wait for a Q slot and the Q load, before the unit's next tile).

Both print the kernel's span against the SMs' mean busy time (their difference: idle
SMs). The timer ticks in 0.256 us steps on an H200: statistics over thousands of units
resolve less than a tick per unit, single values do not.
"""
import argparse
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
KERNEL = "templates/kernels/forward_sm90_ws.cuh"
PERSISTENT = "wgmma_ws_persistent"

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


# The persistent kernel's stamps: its units overlap (a unit's O is stored under the next
# unit's first Q K^T), so a unit's stamps go to a buffer of their own, not over its lse:
# the copy's launch.py allocates the tickets int with TL_WORDS words per (unit, consumer)
# after it, and thread 0 of each consumer writes them when they happen (one store each).
# Words: 0 the consumer reaches the unit, 1 its Q rows are in, and in the unit's first step
# 2 its first K tile is in, 3 the consumer has its turn, 4 the carried P V is done, 5 the
# unit before's O is stored, 6 the first Q K^T is done, 7 the first step ends; 8 the
# unit's last step ends; 9 its tiles; 10 the SM; 11 the consumer's unit count so far;
# 12, 13, 14 the unit's summed waits for K tiles, for turns and for its Q K^Ts (issue ->
# done, with the store in the first step's), 15 it has the unit's tile walk (from 1, its
# own work before it waits for the first K tile), 20 it starts that wait (after its first
# step's walk.advance(), which classifies the next tile). With --producer, words 16-19 of
# consumer 0's are the loading thread's (the producer's one TMA thread): 16 it has the
# unit's card, 19 just before its loads (16 -> 19 was the tile row's arithmetic before
# the cards), 17 it has issued the unit's first K tile (after waiting for its stage), 18
# it has loaded the next unit's Q rows (or this one's, one slot), after waiting for their
# slot. Against consumer 0's words 1 and 2 they say whether a unit's first K tile was
# issued late (the row, the stage, the Q slot of the unit before) or slow to arrive.
TL_WORDS = 21
TL_MACRO = f'''
constexpr int kTlWords = {TL_WORDS};  // timeline.py's TL_WORDS
''' + '''
#define FG_TL(e, t)                                                                          \\
  do {                                                                                       \\
    if (kPersistent && (threadIdx.x & 127) == 0)                                             \\
      a.tickets[1 + (tl_unit * Tiles::kConsumers + consumer) * kTlWords + (e)] = int(t);    \\
  } while (0)
'''
PERSISTENT_EDITS = [
    ("namespace fg {\n", "namespace fg {\n" + STAMPS + TL_MACRO),
    ("  int q_slot = 0;",
     "  int q_slot = 0;\n  int tl_unit = 0, tl_tiles = 0, tl_seq = 0;\n"
     "  uint32_t tl_k = 0, tl_turn = 0, tl_qk = 0;"),
    ("    walk.advance();\n    mbarrier_wait(&full_k[stage], round & 1);\n",
     "    walk.advance();\n    const uint32_t tl_a = fg_now();\n"
     "    mbarrier_wait(&full_k[stage], round & 1);\n    const uint32_t tl_b = fg_now();\n"
     "    tl_k += tl_b - tl_a;\n    ++tl_tiles;\n"
     "    if constexpr (kKind != kNextTile) FG_TL(2, tl_b);\n"
     "    if constexpr (kKind != kNextTile) FG_TL(20, tl_a);\n"),
    ("    if constexpr (kTurns) bar_sync(kTurnBarrier + consumer, 256);\n    if constexpr (kCarry",
     "    if constexpr (kTurns) bar_sync(kTurnBarrier + consumer, 256);\n"
     "    const uint32_t tl_c = fg_now();\n"
     "    tl_turn += tl_c - tl_b;\n    if constexpr (kKind != kNextTile) FG_TL(3, tl_c);\n"
     "    if constexpr (kCarry"),
    ("      wgmma_wait<1>();  // the carried P V",
     "      wgmma_wait<1>();\n      FG_TL(4, fg_now());  // the carried P V"),
    ("      store_carried();\n    }\n    wgmma_wait<",
     "      store_carried();\n      FG_TL(5, fg_now());\n    }\n    wgmma_wait<"),
    ("    fence_operand(s[0]);\n    if (kPersistent && walk.done())",
     "    fence_operand(s[0]);\n    {\n      const uint32_t tl_d = fg_now();\n"
     "      tl_qk += tl_d - tl_c;\n      if constexpr (kKind != kNextTile) FG_TL(6, tl_d);\n    }\n"
     "    if (kPersistent && walk.done())"),
    ("    pending = stage;\n    ++i;\n  };",
     "    pending = stage;\n    ++i;\n    if constexpr (kKind != kNextTile) FG_TL(7, fg_now());\n  };"),
    ("      mbarrier_wait(&q_full[buffer], use & 1);\n",
     "      const uint32_t tl_0 = fg_now();\n      mbarrier_wait(&q_full[buffer], use & 1);\n"
     "      const uint32_t tl_1 = fg_now();\n"),
    ("      if (u < 0) break;\n",
     "      if (u < 0) break;\n      tl_unit = u;\n      tl_k = tl_turn = tl_qk = 0;\n      tl_tiles = 0;\n"
     "      FG_TL(0, tl_0);\n      FG_TL(1, tl_1);\n"),
    ("        while (!walk.done()) step(Next{}, walk, n, cta.b, cta.h, row0, q_rows, store_carried);\n"
     "        carried = u;\n",
     "        while (!walk.done()) step(Next{}, walk, n, cta.b, cta.h, row0, q_rows, store_carried);\n"
     "        carried = u;\n        FG_TL(8, fg_now());\n        FG_TL(9, tl_tiles);\n"
     "        FG_TL(10, fg_smid());\n        FG_TL(11, tl_seq++);\n        FG_TL(12, tl_k);\n"
     "        FG_TL(13, tl_turn);\n        FG_TL(14, tl_qk);\n"),
    ("      const uint32_t q_rows = smem_address(sQ0 + buffer * kQ);\n      auto walk = kv.walk();\n",
     "      const uint32_t q_rows = smem_address(sQ0 + buffer * kQ);\n      auto walk = kv.walk();\n"
     "      FG_TL(15, fg_now());\n"),
]
# --producer: the producer's stamps too (words 16-19 of consumer 0's). They cost the
# loading thread registers: the persistent sliding window's kernel spills 40 / 64 bytes
# with them against 32 / 40 without (ptxas, sm_90a, with the unit cards; the consumers'
# stamps add none), so they are a separate run, and their numbers carry that perturbation.
PRODUCER_EDITS = [
    ("          break;\n        }\n        load_unit(",
     "          break;\n        }\n"
     "        a.tickets[1 + card.unit * Tiles::kConsumers * kTlWords + 16] = int(fg_now());\n"
     "        load_unit("),
    ("card.row, [&] {\n          if (kQAhead) wait_card",
     "card.row, [&] {\n          a.tickets[1 + card.unit * Tiles::kConsumers * kTlWords + 17] = int(fg_now());\n"
     "          if (kQAhead) wait_card"),
    ("          load_q(next_card, kQAhead ? k + 1 : k);\n",
     "          load_q(next_card, kQAhead ? k + 1 : k);\n"
     "          a.tickets[1 + card.unit * Tiles::kConsumers * kTlWords + 18] = int(fg_now());\n"),
    # 19: the unit's tile row is at hand (the empty asm holds the stamp after the card's
    # loads, which the compiler could otherwise sink past it)
    ("        load_unit(Cta(a, BM, card.m_block",
     "        asm volatile(\"\" ::\"r\"(card.row.begin), \"r\"(card.row.end), \"l\"(card.row.list));\n"
     "        a.tickets[1 + card.unit * Tiles::kConsumers * kTlWords + 19] = int(fg_now());\n"
     "        load_unit(Cta(a, BM, card.m_block"),
]
# --store: the persistent kernel's O store (store_output_tma) split into its pieces, in SM
# cycles (clock(): one SM's counter, exact within the function, where the global timer
# ticks in ~0.25 us). Thread 0 of a consumer writes STORE_WORDS words per (batch, head, 64
# rows) from STORE_BASE (the stamp buffer's second half): 0 the row scales and lse stores,
# 1 the wait for the stage's last TMA store to have read it, 2 the first barrier, 3 the
# stmatrix writes, 4 the proxy fence, 5 the second barrier, 6 the TMA store's issue, 7 one.
STORE_BASE = 1 + TL_WORDS * 4 * (1 << 15)
STORE_WORDS = 8
STORE_PIECES = ("scales+lse", "wait_read", "bar1", "stmatrix", "fence", "bar2", "tma_issue")
STORE_EDITS = [
    ("  const int warp_row = 16 * (tid >> 5);  // the warp's first row of the 64\n",
     "  const int warp_row = 16 * (tid >> 5);  // the warp's first row of the 64\n"
     "  const uint32_t st0 = clock();\n"),
    ("  if (tid == 0) bulk_wait_read<0>();  // the stage's last store has read it (a unit ago)\n"
     "  bar_sync(barrier, 128);\n",
     "  const uint32_t st1 = clock();\n"
     "  if (tid == 0) bulk_wait_read<0>();  // the stage's last store has read it (a unit ago)\n"
     "  const uint32_t st2 = clock();\n  bar_sync(barrier, 128);\n  const uint32_t st3 = clock();\n"),
    ("  fence_proxy_async();  // the stage was written by the generic proxy; the TMA reads async\n"
     "  bar_sync(barrier, 128);\n",
     "  const uint32_t st4 = clock();\n"
     "  fence_proxy_async();  // the stage was written by the generic proxy; the TMA reads async\n"
     "  const uint32_t st5 = clock();\n  bar_sync(barrier, 128);\n  const uint32_t st6 = clock();\n"),
    ("    tma_store_tile<64, Dv>(stage, map, rows0, h, b);\n    bulk_commit();\n",
     "    tma_store_tile<64, Dv>(stage, map, rows0, h, b);\n    bulk_commit();\n"
     "    const uint32_t st7 = clock();\n"
     f"    int* w = a.tickets + {STORE_BASE} + ((int64_t(b) * n.heads + h) * n.q_len + rows0) / 64 * {STORE_WORDS};\n"
     "    w[0] = st1 - st0, w[1] = st2 - st1, w[2] = st3 - st2, w[3] = st4 - st3;\n"
     "    w[4] = st5 - st4, w[5] = st6 - st5, w[6] = st7 - st6, w[7] = 1;\n"),
]
# --decode: the general instance's grid CTA in a decoding step (B = 1, one query row,
# split-KV, one consumer: forward.cu.j2's decoding instance), its producer's side too. The
# stamps go after the tickets int, DECODE_WORDS per CTA (blockIdx's linear index), which
# the copy's launch.py allocates for every call (a zeroing kernel before each forward
# that the real call does not have). Words: 0 the CTA starts (thread 0), 1 the producer
# has the CTA's tile row (the mask's key range), 2 it has issued the first K tile's
# copies, 3 its last tile's, 4 its copies have landed; 5 the consumer starts (thread
# 128), 6 its Q rows are in, 7 the first K tile is in, 8 the first step ends (Q K^T,
# softmax), 9 the last P V is done, 10 the partial O is stored; 11 the SM, 12 the tiles;
# between 1 and 2, the producer's 13 it has the Cta and the sequence's shape (load_unit),
# 14 the Stream and the walk's first tile, 15 the first stage's empty wait is over.
DECODE_WORDS = 16
DECODE_MACRO = f'''
constexpr int kDtlWords = {DECODE_WORDS};  // timeline.py's DECODE_WORDS
''' + '''
#define FG_DTL(e, t)                                                                         \\
  do {                                                                                       \\
    if (a.tickets != nullptr)                                                                \\
      a.tickets[1 + (blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)) *      \\
                        kDtlWords + (e)] = int(t);                                           \\
  } while (0)
'''
DECODE_EDITS = [
    ("namespace fg {\n", "namespace fg {\n" + STAMPS + DECODE_MACRO),
    ("  if constexpr (kGeneral) allow_dependent_launch();\n",
     "  if (threadIdx.x == 0) FG_DTL(0, fg_now());\n  if constexpr (kGeneral) allow_dependent_launch();\n"),
    ("    grid_row = grid_cta.template tiles<V, BM, BN>(a, p, grid_cta.shape(a));\n  }\n",
     "    grid_row = grid_cta.template tiles<V, BM, BN>(a, p, grid_cta.shape(a));\n  }\n"
     "  if (threadIdx.x == 0) FG_DTL(1, fg_now());\n"),
    ("          mbarrier_arrive_on_copies(full);\n",
     "          mbarrier_arrive_on_copies(full);\n          if (threadIdx.x == 0) {\n"
     "            if (kLoadK && tile == 0) FG_DTL(2, fg_now());\n            FG_DTL(3, fg_now());\n"
     "          }\n"),
    ("      if (kGeneral && cta.q0 >= n.q_len) return;  // varlen: past a shorter sequence's rows\n"
     "      const Stream kv{",
     "      if (kGeneral && cta.q0 >= n.q_len) return;  // varlen: past a shorter sequence's rows\n"
     "      if (threadIdx.x == 0) FG_DTL(13, fg_now());\n      const Stream kv{"),
    ("      auto walk = kv.walk();\n      if (walk.done()) after_first();\n",
     "      auto walk = kv.walk();\n      if (threadIdx.x == 0) FG_DTL(14, fg_now());\n"
     "      if (walk.done()) after_first();\n"),
    ("        mbarrier_wait<true>((kLoadK ? empty_k : empty_v) + stage, (round & 1) ^ 1);\n",
     "        mbarrier_wait<true>((kLoadK ? empty_k : empty_v) + stage, (round & 1) ^ 1);\n"
     "        if (threadIdx.x == 0 && kLoadK && tile == 0) FG_DTL(15, fg_now());\n"),
    ("      cp_async_wait<0>();  // no copy outlives the thread that issued it\n",
     "      cp_async_wait<0>();  // no copy outlives the thread that issued it\n"
     "      if (threadIdx.x == 0) FG_DTL(4, fg_now());\n"),
    ("  const int consumer = warpgroup - 1;\n",
     "  const int consumer = warpgroup - 1;\n  if (threadIdx.x == 128) FG_DTL(5, fg_now());\n"),
    ("      bar_sync(kQBarrier + consumer, 128);\n    }\n",
     "      bar_sync(kQBarrier + consumer, 128);\n    }\n    if (threadIdx.x == 128) FG_DTL(6, fg_now());\n"),
    ("    walk.advance();\n    mbarrier_wait(&full_k[stage], round & 1);\n",
     "    walk.advance();\n    mbarrier_wait(&full_k[stage], round & 1);\n"
     "    if (kKind == kFirstTile && threadIdx.x == 128) FG_DTL(7, fg_now());\n"),
    ("    pending = stage;\n    ++i;\n  };",
     "    pending = stage;\n    ++i;\n    if (kKind == kFirstTile && threadIdx.x == 128) FG_DTL(8, fg_now());\n  };"),
    ("      last_pv();\n    }\n    // through Q's buffer",
     "      last_pv();\n    }\n    if (threadIdx.x == 128) FG_DTL(9, fg_now());\n    // through Q's buffer"),
    ("        kQBarrier + consumer);\n  } else {",
     "        kQBarrier + consumer);\n    if (threadIdx.x == 128) {\n      FG_DTL(10, fg_now());\n"
     "      FG_DTL(11, fg_smid());\n      FG_DTL(12, i);\n    }\n  } else {"),
]
LAUNCH = "flashgen/runtime/launch.py"
# the copy's launch.py: room for the stamps after the tickets int, kept for measure()
LAUNCH_EDITS = [
    ("    tickets = (torch.zeros(1, dtype=torch.int32, device=q.device)",
     f"    tickets = (torch.zeros(1 + {TL_WORDS} * 4 * (1 << 16), dtype=torch.int32, device=q.device)"),
    ("    ints.append(0 if tickets is None else tickets.data_ptr())",
     "    ints.append(0 if tickets is None else tickets.data_ptr())\n"
     "    globals()['LAST_TICKETS'] = tickets"),
]

# --decode: room for every call's stamps (a general call has no tickets of its own)
LAUNCH_DECODE_EDITS = [
    ("    ints.append(0 if tickets is None else tickets.data_ptr())",
     f"    tickets = torch.zeros(1 + {DECODE_WORDS} * (1 << 16), dtype=torch.int32, device=q.device)\n"
     "    globals()['LAST_TICKETS'] = tickets\n"
     "    ints.append(0 if tickets is None else tickets.data_ptr())"),
]


def patch(source: str, edits=EDITS, path: str = KERNEL) -> str:
    """The source with the stamps; ValueError names an anchor the source lost."""
    for anchor, replacement in edits:
        if source.count(anchor) != 1:
            raise ValueError(f"{path} has {source.count(anchor)} copies of the anchor "
                             f"{anchor.strip()[:60]!r}; update tests/gpu/timeline.py")
        source = source.replace(anchor, replacement)
    return source


def copy_tree(dst: pathlib.Path, persistent: bool, producer: bool = False,
              decode: bool = False, store: bool = False) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    for part in ("flashgen", "templates", "grammar"):
        shutil.copytree(ROOT / part, dst / part,
                        ignore=shutil.ignore_patterns("__pycache__", "results"))
    kernel = dst / KERNEL
    edits = (DECODE_EDITS if decode else
             PERSISTENT_EDITS + (PRODUCER_EDITS if producer else [])
             + (STORE_EDITS if store else []) if persistent else EDITS)
    kernel.write_text(patch(kernel.read_text(), edits))
    if persistent or decode:
        launch = dst / LAUNCH
        launch.write_text(patch(launch.read_text(),
                                LAUNCH_DECODE_EDITS if decode else LAUNCH_EDITS, LAUNCH))


def decode_row(spec: str, nk: int, d: int, calls: int = 30) -> str:
    """One decoding step's CTAs (B = 1, H = 16, one query row, nk keys; runs in the
    patched copy): each event's median and last CTA after the first CTA's start, in us,
    from the last of `calls` back-to-back steps."""
    import numpy as np
    import torch
    import flashgen
    from flashgen.runtime import launch

    H = 16
    op = flashgen.compile(spec)
    q = torch.randn(1, H, 1, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, H, nk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    with torch.no_grad():
        for _ in range(calls):
            op(q, k, v)
        torch.cuda.synchronize()
    words = launch.LAST_TICKETS[1:].view(-1, DECODE_WORDS).cpu().numpy().astype(np.int64)
    words = words[words[:, 12] > 0]  # the grid's CTAs (stamped, with a tile)
    t = (words - words[:, 0].min()) & 0xFFFFFFFF  # ns from the first CTA's start
    names = {0: "start", 1: "row", 13: "cta", 14: "walk", 15: "stage", 2: "K0 issued",
             3: "last issued", 4: "landed", 5: "consumer", 6: "Q in", 7: "K0 in", 8: "step 1",
             9: "last PV", 10: "stored"}
    cells = " ".join(f"{n} {np.median(t[:, e]) / 1000:.2f}/{t[:, e].max() / 1000:.2f}"
                     for e, n in names.items())
    return (f"{spec:8s} B=1 Nk={nk:6d} d={d} CTAs {len(words)} on {len(np.unique(words[:, 11]))} "
            f"SMs, tiles {np.median(words[:, 12]):.0f} | median/last us: {cells}")


def measure(spec: str, family: str, N: int, d: int) -> str:
    """One row of the table (runs in the patched copy)."""
    import numpy as np
    import torch
    import flashgen
    from flashgen.runtime import launch

    B, H = max(1, 16384 // N), 2048 // d
    op = flashgen.compile(spec) if family == "plain" else flashgen.compile(spec, family=family)
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    # the spec's parameters as the benchmark draws them (key lengths in [1, N], ...)
    from flashgen.runtime.examples import example_params
    params = example_params(op.spec, B, H, N, N, torch.Generator().manual_seed(0), "cuda")
    with torch.no_grad():
        for _ in range(3):
            _, lse = op(q, k, v, return_lse=True, **params)
        torch.cuda.synchronize()
    forward = launch.variant(op.key).plan(d, launch._arch(q.device.index)).forward
    if forward.persistent and family == PERSISTENT:
        return persistent_row(spec, family, N, forward, launch.LAST_TICKETS)
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


def persistent_row(spec: str, family: str, N: int, forward, tickets) -> str:
    """One row for the persistent kernel, from the stamps after its tickets int: means over
    the units (the time a consumer spends on a unit is what they add up to), in us."""
    import numpy as np

    consumers = forward.block_m // 64
    per_unit = consumers * TL_WORDS
    # the units' words end where --store's begin (whose entries would read as units)
    words = tickets[1:1 + (STORE_BASE - 1) // per_unit * per_unit]
    words = words.view(-1, consumers, TL_WORDS).cpu().numpy().astype(np.int64)
    words = words[words[:, 0, 9] > 0]  # units with a tile, stamped
    ev = words[..., :9]
    t = (ev - ev[..., 0].min()) & 0xFFFFFFFF  # ns from the first stamp (32-bit timer)
    tiles = words[..., 9]
    sms = np.unique(words[:, 0, 10])
    carried = words[..., 11] > 0  # the consumer's first unit has no carried step

    def mean(x, where=None):
        x = x if where is None else x[where]
        return float(np.mean(x)) / 1000 if x.size else float("nan")

    c = 0  # consumer 0's view; the last consumer's unit time beside it
    unit = t[..., 8] - t[..., 0]
    # a later tile: the steps after the first over the units that have them, weighted by
    # their count (a mean of per-unit means let one-tile units, whose rest is 0, pull it
    # down 1-2 % under a causal mask); `beyond`: what a unit takes beyond its tiles at that
    # rate (its fixed cost, first step included)
    several = tiles > 1
    rest = np.array([(t[:, k, 8] - t[:, k, 7])[several[:, k]].sum()
                     / max(int((tiles[:, k] - 1)[several[:, k]].sum()), 1)
                     for k in range(consumers)])
    span = (t[..., 8].max() - t[..., 0].min()) / 1000
    busy = unit[:, c].sum() / 1000 / len(sms)

    def since(later, earlier):  # ns, signed, across the 32-bit timer's wrap
        return ((later - earlier + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
    # the producer (words 16-18 of consumer 0's): from starting the unit to issuing its
    # first K tile (the tile row, the wait for the stage), how long before consumer 0 had
    # its Q rows it issued that tile (< 0: after), the tile's flight (issue -> consumer 0's
    # wait for it over), and the wait for a Q slot that follows the issue, before the
    # unit's next tile; `waited`: units whose consumer 0 waited for the tile two timer
    # ticks (0.256 us each on an H200) or more
    p = words[:, 0]
    stamped = bool((p[:, 17] != 0).any())
    waited = since(p[:, 2], p[:, 1]) >= 512
    producer = (f" | producer: stage {mean(since(p[:, 17], p[:, 16])):.2f} "
                f"(row {mean(since(p[:, 19], p[:, 16])):.2f}) "
                f"lead {mean(since(p[:, 1], p[:, 17])):.2f} "
                f"flight {mean(since(p[:, 2], p[:, 17])):.2f} "
                f"(waited: {mean(since(p[:, 2], p[:, 17]), waited):.2f} in {int(waited.sum())} "
                f"of {len(waited)} units) Qslot {mean(since(p[:, 18], p[:, 17])):.2f}") if stamped else ""
    st = tickets[STORE_BASE:].view(-1, STORE_WORDS)
    st = st[st[:, 7] == 1].cpu().numpy().astype(np.int64)
    store = (" | store cycles (mean over {} stores): ".format(len(st)) + " ".join(
        f"{name} {st[:, k].mean():.0f}" for k, name in enumerate(STORE_PIECES))
        + f" all {st[:, :7].sum(1).mean():.0f}") if len(st) else ""
    return (f"{spec:8s} N={N:5d} {family:20s} span {span:7.1f} busy {busy:7.1f} | "
            f"tiles {np.mean(tiles[:, c]):4.1f} unit {mean(unit[:, c]):5.2f} / {mean(unit[:, -1]):5.2f} "
            f"Q {mean(t[:, c, 1] - t[:, c, 0]):.2f} K {mean(t[:, c, 2] - t[:, c, 1]):.2f} "
            f"(own {mean(since(words[:, c, 15], words[:, c, 1])):.2f} "
            f"next {mean(since(words[:, c, 20], words[:, c, 15])):.2f} "
            f"data {mean(since(words[:, c, 2], words[:, c, 20])):.2f}) "
            f"turn {mean(t[:, c, 3] - t[:, c, 2]):.2f} "
            f"carriedPV {mean(t[:, c, 4] - t[:, c, 3], carried[:, c]):.2f} "
            f"store {mean(t[:, c, 5] - t[:, c, 4], carried[:, c]):.2f} "
            f"firstS {mean(t[:, c, 6] - t[:, c, 3]):.2f} soft {mean(t[:, c, 7] - t[:, c, 6]):.2f} "
            f"tile {rest[c] / 1000:.2f} beyond {mean(unit[:, c] - tiles[:, c] * rest[c]):.2f} | per tile: K {mean(words[:, c, 12] / tiles[:, c]):.2f} "
            f"turn {mean(words[:, c, 13] / tiles[:, c]):.2f} QK {mean(words[:, c, 14] / tiles[:, c]):.2f}"
            + producer + store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", default="dense,causal")
    parser.add_argument("--sizes", default="2048,8192")
    parser.add_argument("--head-dim", type=int, default=128)
    # wgmma_ws: the grid's kernel (stamps over lse); wgmma_ws_persistent: the persistent
    # one (stamps after its tickets int: PERSISTENT_EDITS)
    parser.add_argument("--families", default="wgmma_ws,wgmma_ws_persistent")
    parser.add_argument("--copy", default="/tmp/flashgen_timeline_tree")
    parser.add_argument("--producer", action="store_true",
                        help="the persistent kernel's producer stamps too (PRODUCER_EDITS)")
    parser.add_argument("--store", action="store_true",
                        help="the persistent kernel's O store split into its pieces (STORE_EDITS)")
    parser.add_argument("--decode", action="store_true",
                        help="a B = 1 decoding step's CTAs (DECODE_EDITS); --sizes are its keys")
    parser.add_argument("--measure", nargs=4, metavar=("SPEC", "FAMILY", "N", "D"),
                        help=argparse.SUPPRESS)  # the child process, inside the copy
    args = parser.parse_args()
    if args.measure:
        spec, family, N, d = args.measure
        print(decode_row(spec, int(N), int(d)) if family == "decode"
              else measure(spec, family, int(N), int(d)), flush=True)
        return
    families = ["decode"] if args.decode else args.families.split(",")
    envs = {}
    for persistent in sorted({f == PERSISTENT for f in families}):
        copy = pathlib.Path(args.copy + ("_persistent" if persistent else "")
                            + ("_producer" if persistent and args.producer else "")
                            + ("_store" if persistent and args.store else "")
                            + ("_decode" if args.decode else ""))
        copy_tree(copy, persistent, args.producer, args.decode, args.store)
        # the cache beside the copy, not in it: a run after prebuilding into it keeps it
        env = dict(os.environ, FLASHGEN_CACHE_DIR=f"{copy}_cache",
                   PYTHONPATH=os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")]))
        env.pop("FLASHGEN_POISON", None)  # the stamps replace lse; NaN-filled outputs are moot
        envs[persistent] = env
    for spec in args.specs.split(","):
        for N in map(int, args.sizes.split(",")):
            for family in families:
                subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--measure",
                                spec, family, str(N), str(args.head_dim)],
                               env=envs[family == PERSISTENT], check=False)


if __name__ == "__main__":
    main()
