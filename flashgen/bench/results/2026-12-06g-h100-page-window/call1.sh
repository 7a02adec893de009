#!/usr/bin/env bash
# The next device call (prepared 2026-12-06f, not run), from a working tree on branch `page-window`
# (ForwardPlan.general_keys: the general instance keeps 128 keys under the 160-key plan, 64 under 80; and
# schedule.cuh PageWindow for a tile across pages), with main's templates in .whl/t_cursor
# (mkdir -p .whl/t_cursor && git archive main templates | tar -x -C .whl/t_cursor --strip-components=1):
# 1. the GPU tests the general instance runs (paged with 16- and 5-row pages new, decode, varlen);
# 2. the general instance at 160 keys (A, main's choice, here with the window) against 128 (B), pages 256 / 16;
# 3. the window against main's cursor (headers; both at 128 keys, so only the 16-row pages differ).
# Needs .whl/ with the lark wheel (../shared/tools/device-wheels.sh).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 200 python3 -m pytest -q -rf tests/gpu/test_paged.py tests/gpu/test_decode.py tests/gpu/test_varlen.py -p no:cacheprovider > $R/gpu-tests-general.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests-general.log
timeout 150 python3 tests/gpu/paged_ab.py plan --fields general_block_n=160 --specs dense,causal_bottom_right --pages 256,16 > $R/paged-general-ab.log 2>&1
echo "general rc $? $(( $(date +%s) - t0 ))s"
timeout $(( 580 - ($(date +%s) - t0) )) python3 tests/gpu/paged_ab.py header --other .whl/t_cursor --specs dense --pages 16 > $R/paged-window-ab.log 2>&1
echo "window rc $? $(( $(date +%s) - t0 ))s"
tail -14 $R/paged-general-ab.log; tail -6 $R/paged-window-ab.log
