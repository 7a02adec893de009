"""One peer's forward of the suite's case, a few times, for ncu to catch one launch.

    ncu --kernel-name regex:... --launch-skip 3 --launch-count 1 python3 ncu_drive.py cudnn causal 2048 64

Only the named peer runs (no profiler of torch's own: ncu and CUPTI's activity API do not share).
"""
import sys

import torch

import flashgen.api as api
from flashgen.bench import suite
from flashgen.bench.peers import runner

peer, spec, n, d = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
case = suite.grid_cases([spec], [n], ["bf16"], [d], [])[0]
subject = suite._subject(case, api.compile(case.source), torch.device("cuda"))
forward = runner(peer, subject).forward
with torch.no_grad():
    for _ in range(8):
        forward()
torch.cuda.synchronize()
print(f"{peer} {spec} N{n} d{d}: 8 forwards done")
