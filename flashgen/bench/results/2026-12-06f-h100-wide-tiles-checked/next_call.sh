#!/usr/bin/env bash
# The next device call (prepared 2026-12-06f, not run), from a working tree on branch `page-window` with main's
# templates copied to .whl/t_cursor (git worktree or `git archive main templates | tar -x -C .whl/t_cursor
# --strip-components=1`): the paged/decode GPU tests of the page window (16- and 5-row pages new), then the window
# against main's cursor (same 160-key plan, pages of 256 and 16), then the window's 160 keys against the old
# 128-key plan on the same pages. Needs .whl/ with the lark wheel (../shared/tools/device-wheels.sh).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 150 python3 -m pytest -q -rf tests/gpu/test_paged.py tests/gpu/test_decode.py tests/gpu/test_varlen.py -p no:cacheprovider > $R/gpu-tests-paged.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests-paged.log
timeout 150 python3 tests/gpu/paged_ab.py header --other .whl/t_cursor --specs dense,causal_bottom_right --pages 256,16 > $R/paged-window-ab.log 2>&1
echo "window rc $? $(( $(date +%s) - t0 ))s"
timeout 120 python3 tests/gpu/paged_ab.py plan --fields block_n=128,q_slots=2,o_stage=0 --specs dense --pages 256,16 > $R/paged-plan-ab.log 2>&1
echo "plan rc $? $(( $(date +%s) - t0 ))s"
tail -14 $R/paged-window-ab.log; tail -8 $R/paged-plan-ab.log
