#!/usr/bin/env bash
# Prepared 2026-12-07, not run (the session's device time ran out): where a B = 1 decoding forward's warps stall (ncu WarpStateStats raw metrics: no_instruction
# = instruction-cache misses?), ours (the general decoding instance) and cuDNN's kernel, d = 64, 4096 keys.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
KT="tests/gpu/kernel_times.py --specs dense --decode 1,1 --sizes 4096 --head-dim 64 --direction fwd --calls 6"
timeout 150 ncu --kernel-name regex:'forward_kernel_sm90_ws' --launch-skip 6 --launch-count 1 --section WarpStateStats --section InstructionStats --section SchedulerStats --section SpeedOfLight --section SourceCounters -o $R/ours python3 $KT --peers "" > $R/ncu-ours.log 2>&1
echo "ours rc $? $(( $(date +%s) - t0 ))s"
timeout 120 ncu --kernel-name regex:'fprop' --launch-skip 4 --launch-count 1 --section WarpStateStats --section InstructionStats --section SchedulerStats --section SpeedOfLight -o $R/cudnn python3 $KT --peers cudnn > $R/ncu-cudnn.log 2>&1
echo "cudnn rc $? $(( $(date +%s) - t0 ))s"
# the start of a CTA split finer (timeline.py DECODE_WORDS 13-15: the Cta, the walk, the first stage)
timeout 120 python3 tests/gpu/timeline.py --decode --specs dense --sizes 4096 --head-dim 64 > $R/tl-decode-d64.log 2>&1
echo "tl rc $? $(( $(date +%s) - t0 ))s"; grep -v compiling $R/tl-decode-d64.log
for f in ours cudnn; do ncu --import $R/$f.ncu-rep --page raw --csv > $R/$f-raw.csv 2>&1; done
ncu --import $R/ours.ncu-rep --page source --csv --print-source sass > $R/ours-sass.csv 2>&1; ls -la $R; gzip -k $R/ours-sass.csv
python3 - $R <<'PY'
import csv, sys
R = sys.argv[1]
for f in ("ours", "cudnn"):
    rows = list(csv.reader(open(f"{R}/{f}-raw.csv")))
    h, u, v = rows[0], rows[1], rows[2]
    keep = [i for i, k in enumerate(h) if ("issue_stalled" in k and "not_issued" not in k) or k in (
        "gpu__time_duration.sum", "smsp__inst_executed.sum", "sm__cycles_active.avg", "smsp__issue_active.avg.per_cycle_active")]
    vals = sorted(((float(v[i].replace(",", "")) if v[i].replace(",", "").replace(".", "").isdigit() else 0.0, h[i]) for i in keep), reverse=True)
    print("==", f, v[h.index("Kernel Name")][:60] if "Kernel Name" in h else "")
    for x, k in vals[:20]:
        print(f"  {x:12.3f} {k}")
PY
