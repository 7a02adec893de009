#!/usr/bin/env bash
# Wide forward tiles in the planner (160 keys at d = 128, 80 at d = 256): smoke against the oracle, the
# block-size sweep against the old tiles per spec (cuDNN beside), paged + deterministic GPU tests.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
timeout 150 python3 tests/gpu/plan_smoke.py block_n=160 dense,causal,sliding_window,key_padding,document,prefix_lm,softcap,dropout_causal 128 > $R/smoke-160.log 2>&1
echo "smoke 160 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke-160.log
timeout 100 python3 tests/gpu/plan_smoke.py block_n=80 dense,causal,sliding_window,document,softcap 256 > $R/smoke-80.log 2>&1
echo "smoke 80 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke-80.log
timeout 150 python3 -m flashgen bench dense causal sliding_window key_padding document prefix_lm softcap --sizes 2048,8192 --dtype bf16 --head-dim 128 --peers cudnn --directions fwd --kv-blocks 128 --out $R/sweep128 > $R/sweep128.log 2>&1
echo "sweep 128 rc $? $(( $(date +%s) - t0 ))s"
timeout 100 python3 -m flashgen bench dense causal sliding_window document softcap --sizes 2048,8192 --dtype bf16 --head-dim 256 --peers cudnn --directions fwd --kv-blocks 64 --out $R/sweep256 > $R/sweep256.log 2>&1
echo "sweep 256 rc $? $(( $(date +%s) - t0 ))s"
FLASHGEN_POISON=1 timeout $(( 580 - ($(date +%s) - t0) )) python3 -m pytest -q -rf tests/gpu/test_paged.py tests/gpu/test_kernels.py -k "paged or deterministic" -p no:cacheprovider > $R/tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -2 $R/tests.log
grep -A14 "kv-block sweep" $R/sweep128.log; grep -A12 "kv-block sweep" $R/sweep256.log
