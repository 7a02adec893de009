"""How the H100's power cap moves a timing. 1) per-call times of ours and cuDNN's forward from
a cool start (2 s idle), over 1.5 s of back-to-back runs with the harness's L2 clear before
each; 2) the harness's own time_ms (warmup 3, reps 20) after 1 s idle, in both orders, and
after a 0.6 s warm-up by time (steady state under the cap)."""
import statistics, sys, time, torch
import flashgen.api as api
from flashgen.bench import suite
from flashgen.bench.peers import runner
from flashgen.bench.timing import time_ms, _l2_buffer

dev = torch.device("cuda")
clear = _l2_buffer(dev)
EDGES = [5, 20, 50, 100, 200, 400, 800, 1500]

def curve(fn, ms_guess, seconds=1.5):
    fn(); torch.cuda.synchronize(); time.sleep(2.0)
    n = int(seconds * 1e3 / (ms_guess + 0.05))
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in ev:
        clear.zero_(); s.record(); fn(); e.record()
    torch.cuda.synchronize()
    t0 = ev[0][0]
    out, lo = [], 0.0
    for hi in EDGES:
        xs = [s.elapsed_time(e) for s, e in ev if lo <= t0.elapsed_time(s) < hi]
        out.append(f"{statistics.median(xs):.3f}" if xs else "  -  ")
        lo = hi
    return out

def warm_by_time(fn, seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            clear.zero_(); fn()
        torch.cuda.synchronize()

for spec, n in [("dense", 2048), ("dense", 8192), ("causal", 8192)]:
    case = suite.grid_cases([spec], [n], ["bf16"], [128], [])[0]
    subject = suite._subject(case, api.compile(case.source), dev)
    fns = {p: runner(p, subject).forward for p in ("flashgen", "cudnn")}
    for f in fns.values():
        f()
    torch.cuda.synchronize()
    guess = {p: time_ms(f, 2, 5).median_ms for p, f in fns.items()}
    print(f"\n{spec} N={n}: per-call median ms in windows of elapsed ms since a cool start "
          + " ".join(f"<{e}" for e in EDGES))
    for p, f in fns.items():
        print(f"  {p:9s} " + " ".join(curve(f, guess[p])))
    res = {}
    for r in range(2):
        for order in (("flashgen", "cudnn"), ("cudnn", "flashgen")):
            time.sleep(1.0)
            for p in order:
                res.setdefault((f"cool, {order[0]} first", p), []).append(time_ms(fns[p], 3, 20, 1.0).median_ms)
        for p in ("flashgen", "cudnn", "flashgen", "cudnn"):
            warm_by_time(fns[p], 0.6)
            res.setdefault(("steady (0.6 s warm)", p), []).append(time_ms(fns[p], 3, 20, 1.0).median_ms)
    for (way, p), xs in res.items():
        print(f"  harness {way:22s} {p:9s} {statistics.median(xs):.3f} ms  {[round(x, 3) for x in xs]}")
    del subject, fns
    suite._free_memory()
