"""Does cuDNN gain from the harness's L2 clear while ours does not? Ours and cuDNN's forward
(bf16 d128), interleaved over rounds, timed three ways: the harness's way (a 256 MiB L2
clear before each run), a ~0.1 ms spin before each run instead (a pause, the L2 warm), and
back to back; with the SM clock and power that nvidia-smi samples during each phase."""
import statistics, subprocess, sys, threading, time, torch
import flashgen.api as api
from flashgen.bench import suite
from flashgen.bench.peers import runner

samples = []  # (time, MHz, W)
def sample():
    p = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                          "-lms", "20"], stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        try:
            mhz, w = (float(x) for x in line.split(","))
            samples.append((time.time(), mhz, w))
        except ValueError:
            pass
threading.Thread(target=sample, daemon=True).start()
clear = torch.empty(64 << 20, dtype=torch.int32, device="cuda")

def phase(fn, before, n):
    for _ in range(5):
        before(); fn()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    t0 = time.time()
    for s, e in ev:
        before()
        s.record(); fn(); e.record()
    torch.cuda.synchronize()
    t1 = time.time()
    inside = [(m, w) for t, m, w in samples if t0 <= t <= t1]
    mhz = statistics.mean(m for m, _ in inside) if inside else -1
    watts = statistics.mean(w for _, w in inside) if inside else -1
    return statistics.median(s.elapsed_time(e) for s, e in ev), mhz, watts

ways = {"clear": lambda: clear.zero_(), "spin": lambda: torch.cuda._sleep(150000), "b2b": lambda: None}
time.sleep(1)
for spec in sys.argv[1].split(","):
    for n in (2048, 8192):
        case = suite.grid_cases([spec], [n], ["bf16"], [128], [])[0]
        subject = suite._subject(case, api.compile(case.source), torch.device("cuda"))
        reps = 400 if n == 2048 else 120
        res = {}
        for r in range(3):
            for peer in ("flashgen", "cudnn"):
                fn = runner(peer, subject).forward
                for way, before in ways.items():
                    res.setdefault((peer, way), []).append(phase(fn, before, reps))
        for (peer, way), rows in res.items():
            ms = statistics.median(x[0] for x in rows)
            print(f"{spec} N={n} {peer:9s} {way:6s} {ms:.3f} ms  {statistics.mean(x[1] for x in rows):6.0f} MHz"
                  f"  {statistics.mean(x[2] for x in rows):5.0f} W   rounds {[round(x[0], 3) for x in rows]}")
