#!/usr/bin/env bash
# poly-exp2 (prepared 2026-12-07, not GPU-run): the three-consumer forward (d = 64) takes every fourth
# column fragment's exponentials through softmax.cuh poly_exp2 (FMA and integer pipes) instead of ex2 (MUFU).
# From a checkout of branch poly-exp2, carry [".whl"]: the lark wheel and .whl/t_main (main's templates/:
# git archive main templates | tar -x -C /tmp/m && cp -r /tmp/m/templates .whl/t_main). ~450 s.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
# correctness first: NaN / inf / fully masked rows / large scores, then the kernels' oracle and dropout
timeout 120 python3 -m pytest -q tests/gpu/test_numerics.py > $R/tests-numerics.log 2>&1
echo "numerics rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests-numerics.log
timeout 130 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs causal,dense,sliding_window --sizes 2048,8192 --d 64 --directions fwd --cudnn causal,dense --flex "" --rounds 6 > $R/ab64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
left=$(( 430 - ($(date +%s) - t0) ))
[ $left -gt 40 ] && timeout $left python3 -m pytest -q tests/gpu/test_kernels.py tests/gpu/test_dropout.py > $R/tests-kernels.log 2>&1
echo "kernels+dropout rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests-kernels.log
grep -E '^FAILED|^ERROR' $R/tests-*.log | cut -c1-300 | head -8
sed -n '/against/,$p' $R/ab64.log
