"""Steady-state kernel durations (torch.profiler) of ours and cuDNN's forward, dense/causal bf16 d128."""
import sys, torch
from torch.profiler import profile, ProfilerActivity
import flashgen.api as api
from flashgen.bench import suite
from flashgen.bench.peers import runner
for spec in sys.argv[1].split(","):
    for n in (2048, 8192):
        case = suite.grid_cases([spec], [n], ["bf16"], [128], [])[0]
        subject = suite._subject(case, api.compile(case.source), torch.device("cuda"))
        for peer in ("flashgen", "cudnn"):
            fn = runner(peer, subject).forward
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(50):
                fn()
            e.record(); torch.cuda.synchronize()
            loop = s.elapsed_time(e) / 50
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(50):
                    fn()
                torch.cuda.synchronize()
            rows = []
            for ev in prof.key_averages():
                if ev.device_type is not None and "CUDA" in str(ev.device_type) and ev.count > 0:
                    rows.append((ev.key[:70], ev.count, ev.device_time_total / ev.count / 1000))
            print(f"{spec} N={n} {peer}: loop {loop:.3f} ms/call; kernels: " +
                  "; ".join(f"{k} x{c} {t:.3f} ms" for k, c, t in rows))
