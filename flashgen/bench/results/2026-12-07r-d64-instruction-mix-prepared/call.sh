#!/usr/bin/env bash
# Prepared 2026-12-07, not run (the device gave no machine for the rest of that session): where the
# 1.30x warp instructions of our d = 64 causal forward against cuDNN's come from (PERF.md, "two
# consumers at d = 64, measured, not kept"). cuDNN's kernel and ours (main) under ncu, one launch
# each, with per-instruction executed counts (the SASS source page), then the opcode mix of each.
# From a checkout of main, carry [".whl"] (the lark wheel). ~120 s.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache FLASHGEN_QUIET=1 || exit
R=$OUT; D=flashgen/bench/results/2026-12-07r-d64-instruction-mix-prepared
N=flashgen/bench/results/2026-12-07i-d64-causal-prepared/ncu_drive.py
nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
for p in cudnn:'regex:fprop|sdpa|cudnn' flashgen:'regex:forward_kernel'; do
  t=${p%%:*}
  timeout 100 ncu --clock-control none --kernel-name "${p#*:}" --launch-skip 3 --launch-count 1 \
    --section SourceCounters --section SpeedOfLight --section InstructionStats --section LaunchStats \
    -o $R/$t python3 $N $t causal 2048 64 > $R/ncu-$t.log 2>&1
  echo "ncu $t rc $?"
  ncu --import $R/$t.ncu-rep --page source --csv --print-source sass > $R/$t-sass.csv 2>&1
  ncu --import $R/$t.ncu-rep --page details > $R/$t-details.txt 2>&1
  rm -f $R/$t.ncu-rep
done
python3 $D/sass_mix.py $R/cudnn-sass.csv $R/flashgen-sass.csv | tee $R/mix.txt
gzip $R/*-sass.csv
