#!/usr/bin/env bash
# 2026-12-06f call 2, on delta-rows-3 (main dca45eb + the delta kernel's 16-byte rows): the paged and decode GPU
# tests of the page cursor; the cursor against the per-row lookup (header A/B, t_nocursor = this tree with main
# 9bc2e7b's schedule.cuh); the delta kernel's rows against main's (t_nodelta = this tree with main's backward.cuh
# and a DeltaRows shim of 8 rows a CTA); then the delta kernel's backward tests (varlen, numerics).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 100 python3 -m pytest -q -rf tests/gpu/test_paged.py tests/gpu/test_decode.py -p no:cacheprovider > $R/gpu-tests-paged.log 2>&1
echo "tests paged rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests-paged.log
timeout 80 python3 tests/gpu/paged_ab.py header --other .whl/t_nocursor --specs dense --pages 256 > $R/paged-cursor-ab.log 2>&1
echo "paged cursor rc $? $(( $(date +%s) - t0 ))s"
timeout $(( 220 - ($(date +%s) - t0) )) python3 tests/gpu/switch_ab.py header --other .whl/t_nodelta --specs document,sliding_window,key_padding,causal --sizes 2048 --rounds 4 --directions fwd+bwd --flex "" --cudnn "" > $R/ab-delta-rows.log 2>&1
echo "ab delta rc $? $(( $(date +%s) - t0 ))s"
tail -8 $R/paged-cursor-ab.log; tail -7 $R/ab-delta-rows.log
