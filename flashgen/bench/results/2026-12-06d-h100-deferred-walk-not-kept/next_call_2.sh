#!/usr/bin/env bash
# The next session's second device call (prepared 2026-12-06d, not run), from a working tree with
# delta-rows.patch applied (git apply flashgen/bench/results/2026-12-06d-h100-deferred-walk-not-kept/delta-rows.patch)
# and main's templates copied to .whl/templates_main: the delta kernel's 16-byte rows against main's, forward+backward
# in one process (alternating positions), its kernel time, then the backward's GPU tests.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
timeout 150 python3 tests/gpu/switch_ab.py header --other .whl/templates_main --specs document,sliding_window,key_padding,causal --sizes 2048,8192 --rounds 4 --directions fwd+bwd --flex "" --cudnn "" > $R/ab-delta-rows.log 2>&1
echo "ab rc $? $(( $(date +%s) - t0 ))s"
timeout 60 python3 tests/gpu/kernel_times.py --specs causal,document --sizes 2048 --peers "" > $R/kernel-times-delta.log 2>&1
echo "kt rc $? $(( $(date +%s) - t0 ))s"
FLASHGEN_POISON=1 timeout $(( 585 - ($(date +%s) - t0) )) python3 -m pytest -q -rf tests/gpu/test_kernels.py tests/gpu/test_varlen.py tests/gpu/test_numerics.py -p no:cacheprovider > $R/gpu-tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -2 $R/gpu-tests.log
tail -10 $R/ab-delta-rows.log; grep -e '^==' -e delta_kernel $R/kernel-times-delta.log | cut -c1-100
