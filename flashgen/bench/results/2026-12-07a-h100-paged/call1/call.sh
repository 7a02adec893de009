#!/usr/bin/env bash
# Prepared, not run: branch paged-loop (the producer's paged / unpaged loops apart), from its checkout, against main fc8d4ac's templates:
#   mkdir -p .whl/t_nc2 && git archive fc8d4ac templates | tar -x -C .whl/t_nc2 --strip-components=1
# the A/B first (d = 64 three consumers, d = 128 two), then test_paged, test_varlen, test_decode.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
timeout 110 python3 tests/gpu/paged_ab.py header --other .whl/t_nc2 --d 64 --shapes prefill --pages 16 --packed --specs causal,dense --rounds 6 > $R/loop-d64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
timeout 90 python3 tests/gpu/paged_ab.py header --other .whl/t_nc2 --d 128 --shapes prefill --pages 16 --packed --specs causal --rounds 6 > $R/loop-d128.log 2>&1
echo "ab128 rc $? $(( $(date +%s) - t0 ))s"
grep -h "%" $R/loop-d64.log $R/loop-d128.log
FLASHGEN_POISON=1 timeout $(( 540 - ($(date +%s) - t0) )) python3 -m pytest -q -rf tests/gpu/test_paged.py tests/gpu/test_varlen.py tests/gpu/test_decode.py -p no:cacheprovider > $R/gpu-tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -2 $R/gpu-tests.log
