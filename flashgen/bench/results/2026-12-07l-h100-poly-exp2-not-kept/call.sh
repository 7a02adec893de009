#!/usr/bin/env bash
# call.sh trimmed to the session's last ~430 s of device time (2026-12-07, 16:00 UTC): numerics, the
# d = 64 A/B (causal, dense; 4 rounds), then test_kernels' d = 64 cases. From a checkout of poly-exp2,
# carry [".whl"] (the lark wheel, .whl/t_main).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
timeout 100 python3 -m pytest -q tests/gpu/test_numerics.py > $R/tests-numerics.log 2>&1
echo "numerics rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests-numerics.log
timeout 140 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs causal,dense --sizes 2048,8192 --d 64 --directions fwd --cudnn causal,dense --flex "" --rounds 4 > $R/ab64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
left=$(( 400 - ($(date +%s) - t0) ))
[ $left -gt 40 ] && timeout $left python3 -m pytest -q tests/gpu/test_kernels.py -k "64" > $R/tests-kernels.log 2>&1
echo "kernels d64 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests-kernels.log
grep -E '^FAILED|^ERROR' $R/tests-*.log | cut -c1-300 | head -8
sed -n '/against/,$p' $R/ab64.log
