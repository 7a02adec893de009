#!/usr/bin/env bash
# row-shift (2026-12-07): the persistent forward's Q tiles laid from the sequence's end (the short unit
# first). From a checkout of branch row-shift, carry [".whl"]: the lark wheel and .whl/t_main (main's
# templates/, for the header A/B). Correctness first (test_kernels.py, which has the shift's cases), then
# the A/B at d = 64 (3 consumers, 192-row units: N = 2048 / 8192 shift 64 rows, 4096 shifts 128).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
timeout 200 python3 -m pytest -q tests/gpu/test_kernels.py > $R/tests-kernels.log 2>&1
echo "test_kernels rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests-kernels.log
timeout 150 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs causal,dense,sliding_window --sizes 2048,4096,8192 --d 64 --directions fwd --cudnn causal,dense --flex "" --rounds 6 > $R/ab64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
left=$(( 470 - ($(date +%s) - t0) ))
[ $left -gt 40 ] && timeout $left python3 -m pytest -q tests/gpu/test_dropout.py > $R/tests-dropout.log 2>&1
echo "dropout rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests-dropout.log
grep -E '^FAILED|^ERROR' $R/tests-*.log | cut -c1-300 | head -8
sed -n '/against/,$p' $R/ab64.log
