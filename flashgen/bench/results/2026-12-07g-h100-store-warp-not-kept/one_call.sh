#!/usr/bin/env bash
# store-warp in ONE call (written 2026-12-07 when device starts were scarce): correctness (the smokes, then
# test_kernels.py with what time is left) and the two A/Bs; the timelines wait for a second call.
# From a checkout of branch store-warp, carry [".whl"] (see call.sh).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
timeout 150 python3 tests/gpu/plan_smoke.py kv_stages=2 dense,sliding_window,document,key_padding 128 > $R/smoke128.log 2>&1
echo "smoke128 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke128.log
timeout 70 python3 tests/gpu/plan_smoke.py kv_stages=4 causal,dense,sliding_window 64 > $R/smoke64.log 2>&1
echo "smoke64 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke64.log
timeout 140 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs dense,causal,sliding_window,key_padding --sizes 2048,8192 --d 128 --directions fwd --cudnn dense,causal --flex "" --rounds 6 > $R/ab128.log 2>&1
echo "ab128 rc $? $(( $(date +%s) - t0 ))s"
timeout 80 python3 tests/gpu/switch_ab.py plan --fields o_stage=0 --specs causal,dense,sliding_window --sizes 2048,8192 --d 64 --directions fwd --cudnn causal,dense --flex "" --rounds 4 > $R/ab64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
left=$(( 588 - ($(date +%s) - t0) ))
[ $left -gt 40 ] && timeout $left python3 -m pytest -q tests/gpu/test_kernels.py > $R/tests-kernels.log 2>&1
echo "test_kernels rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests-kernels.log
grep -E '^FAIL|^ERROR|failed' $R/smoke128.log $R/smoke64.log $R/tests-kernels.log | cut -c1-300 | head -8
sed -n '/against/,$p' $R/ab128.log $R/ab64.log
