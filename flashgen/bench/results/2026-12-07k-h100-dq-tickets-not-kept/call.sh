#!/usr/bin/env bash
# The atomic dQ's tile tickets (branch fused-dq, templates/kernels/dq_tickets.cuh): correctness
# (the backward against the float64 reference, outputs poisoned; fully masked rows), then the A/B
# of the zeroing + conversion passes (A) against the tickets (B), forward+backward, one process.
# From a checkout of the branch, carry [".whl"] (the lark wheel). ~450 s.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
timeout 120 python3 flashgen/bench/results/2026-12-07k-dq-tickets/smoke.py > $R/smoke.log 2>&1
echo "smoke rc $? $(( $(date +%s) - t0 ))s"; tail -8 $R/smoke.log
timeout 260 python3 -m pytest -q -x tests/gpu/test_kernels.py tests/gpu/test_numerics.py > $R/tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests.log
grep -E '^FAILED|^ERROR|Error|error' $R/tests.log | cut -c1-300 | head -8
left=$(( 540 - ($(date +%s) - t0) ))
timeout $left python3 tests/gpu/switch_ab.py tickets --specs document,sliding_window,causal,key_padding --sizes 2048,8192 --d 128 --flex document,sliding_window,causal,key_padding --cudnn "" --rounds 4 > $R/ab.log 2>&1
echo "ab rc $? $(( $(date +%s) - t0 ))s"
left=$(( 575 - ($(date +%s) - t0) ))
[ $left -gt 30 ] && timeout $left python3 tests/gpu/kernel_times.py --specs document,sliding_window --sizes 2048 --peers flex --direction fwd+bwd > $R/kernel-times.log 2>&1
echo "kernel times rc $? $(( $(date +%s) - t0 ))s"
grep -v compiling $R/kernel-times.log | grep -iE "delta|convert|count|backward|forward|flex|sdpa|triton|loop|==" | cut -c1-150 | head -30
grep -v compiling $R/ab.log | tail -14
