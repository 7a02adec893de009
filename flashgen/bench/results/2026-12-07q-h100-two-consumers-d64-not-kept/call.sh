#!/usr/bin/env bash
# Prepared 2026-12-07, not run: branch two-consumers-d64 (the planner gives d = 64 two consumers where
# the mask has a diagonal band) in one call: the A/B first on the fresh machine (A: three consumers,
# main's plan, by the plan's fields; B: the branch's planner), cuDNN beside; then the GPU tests of
# the d = 64 kernels the change moves. From a checkout of the branch, carry [".whl"]. ~480 s.
# PERF.md on main: "the d = 64 causal profile" (the prediction is there).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
timeout 240 python3 tests/gpu/switch_ab.py plan --fields block_m=192,warps=16,o_stage=0 --specs causal,sliding_window,prefix_lm,alibi,causal_bottom_right --sizes 2048,8192 --d 64 --directions fwd --cudnn causal --flex "" --rounds 4 > $R/ab.log 2>&1
echo "ab rc $? $(( $(date +%s) - t0 ))s"
left=$(( 470 - ($(date +%s) - t0) ))
[ $left -gt 60 ] && FLASHGEN_POISON=1 timeout $left python3 -m pytest -q -k "64" tests/gpu/test_kernels.py tests/gpu/test_dropout.py tests/gpu/test_numerics.py > $R/tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests.log
grep -E '^FAILED|^ERROR' $R/tests.log | cut -c1-300 | head -8
grep -v compiling $R/ab.log | sed -n '/against/,$p'
