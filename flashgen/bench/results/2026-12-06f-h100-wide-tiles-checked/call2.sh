#!/usr/bin/env bash
# 2026-12-06f call 2, on delta-rows-3 (main dca45eb + the delta kernel's 16-byte rows): the page cursor against
# the per-row lookup (header A/B, t_nocursor = this tree with main 9bc2e7b's schedule.cuh), the wide tiles with
# the cursor against the old tiles; the delta kernel's rows against main's (t_nodelta = this tree with main's
# backward.cuh and a DeltaRows shim of 8 rows a CTA); then the GPU tests of both (paged, decode, kernels).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
timeout 120 python3 tests/gpu/paged_ab.py header --other .whl/t_nocursor --specs dense > $R/paged-cursor-ab.log 2>&1
echo "paged cursor rc $? $(( $(date +%s) - t0 ))s"
timeout 80 python3 tests/gpu/paged_ab.py plan --fields block_n=128,q_slots=2,o_stage=0 --specs dense --pages 256 > $R/paged-plan-ab.log 2>&1
echo "paged plan rc $? $(( $(date +%s) - t0 ))s"
timeout 140 python3 tests/gpu/switch_ab.py header --other .whl/t_nodelta --specs document,sliding_window,key_padding,causal --sizes 2048,8192 --rounds 4 --directions fwd+bwd --flex "" --cudnn "" > $R/ab-delta-rows.log 2>&1
echo "ab delta rc $? $(( $(date +%s) - t0 ))s"
FLASHGEN_POISON=1 timeout $(( 585 - ($(date +%s) - t0) )) python3 -m pytest -q -rf tests/gpu/test_paged.py tests/gpu/test_decode.py tests/gpu/test_kernels.py -p no:cacheprovider > $R/gpu-tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -3 $R/gpu-tests.log
tail -12 $R/paged-cursor-ab.log; tail -5 $R/paged-plan-ab.log; tail -10 $R/ab-delta-rows.log
