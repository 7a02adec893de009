#!/usr/bin/env bash
# 2026-12-06g call 5, branch decode-persistent: one consumer in the lean instance (padded batches of <= 64 query rows)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 170 python3 -m pytest -q -rf tests/gpu/test_decode.py tests/gpu/test_kernels.py -k "test_decode or bf16-64-1-2-1-1-1-False or bf16-64-1-2-1-1-4096-False" -p no:cacheprovider > $R/gpu-tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests.log
timeout 60 python3 tests/gpu/paged_ab.py plan --fields decode_rows=0 --d 64 --shapes batch --pages 256 --specs dense,causal > $R/batch-ab-d64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
timeout $(( 285 - ($(date +%s) - t0) )) python3 tests/gpu/paged_ab.py plan --fields decode_rows=0 --d 128 --shapes batch --pages 256 --specs dense,causal > $R/batch-ab-d128.log 2>&1
echo "ab128 rc $? $(( $(date +%s) - t0 ))s"
grep -h "contiguous\|page=" $R/batch-ab-d64.log $R/batch-ab-d128.log | grep "%"
