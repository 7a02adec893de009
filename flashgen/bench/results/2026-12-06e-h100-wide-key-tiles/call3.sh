#!/usr/bin/env bash
# The GPU suite (but the fuzz test) on the planner's wide forward tiles, outputs poisoned.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 300 python3 -m pytest -q -rf tests/gpu/test_kernels.py tests/gpu/test_families.py -p no:cacheprovider > $R/gpu-tests-a.log 2>&1
echo "gpu tests a rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests-a.log
FLASHGEN_POISON=1 timeout $(( 490 - ($(date +%s) - t0) )) python3 -m pytest -q -rf $(ls tests/gpu/test_*.py | grep -v -e test_kernels -e test_families -e test_fuzz) -p no:cacheprovider > $R/gpu-tests-b.log 2>&1
echo "gpu tests b rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests-b.log
grep -h -e "^FAILED" -e "^ERROR" $R/gpu-tests-*.log | cut -c1-200 | head -20
