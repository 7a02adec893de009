#!/usr/bin/env bash
# Prepared 2026-12-07, not run (no device time left): two consumers (128-row units, the output
# stage) against main's three (192-row units) in the d = 64 forward, cuDNN beside. The profile
# (2026-12-07n) has ours doing 11 % more tensor work and 14 % more busy cycles on the XU pipe (the MUFU exponentials and other special functions) than cuDNN at causal
# N = 2048, all of it from 192-row units on the diagonal, at the same ~45 % pipe use. From a
# checkout of main, carry [".whl"] (the lark wheel). ~400 s.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; D=flashgen/bench/results/2026-12-07p-d64-two-consumers-prepared; t0=$(date +%s)
nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
# the A/B first, on the fresh machine; A: two consumers (the plan's fields), B: the planner's three
timeout 300 python3 tests/gpu/switch_ab.py plan --fields block_m=128,warps=12,o_stage=1 --specs causal,dense,sliding_window,prefix_lm,alibi,causal_bottom_right,softcap --sizes 2048,8192 --d 64 --directions fwd --cudnn causal,dense --flex "" --rounds 4 > $R/ab.log 2>&1
echo "ab rc $? $(( $(date +%s) - t0 ))s"
FLASHGEN_POISON=1 timeout 90 python3 $D/smoke.py > $R/smoke.log 2>&1
echo "smoke rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke.log; grep FAILED $R/smoke.log
grep -v compiling $R/ab.log | sed -n '/against/,$p'
