#!/usr/bin/env bash
# store-warp's second call (after call.sh, same checkout and carry): the GPU tests of the forward's paths
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s)
timeout 330 python3 -m pytest -q -x tests/gpu/test_kernels.py > $R/tests-kernels.log 2>&1
echo "test_kernels rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests-kernels.log
left=$(( 570 - ($(date +%s) - t0) ))
[ $left -gt 60 ] && timeout $left python3 -m pytest -q -x tests/gpu/test_dropout.py tests/gpu/test_numerics.py tests/gpu/test_nn.py > $R/tests-more.log 2>&1
echo "more rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests-more.log
