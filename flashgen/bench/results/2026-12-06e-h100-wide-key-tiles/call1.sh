#!/usr/bin/env bash
# The next session's first device call (prepared 2026-12-06d, not run): FlashAttention-3's wider forward K/V
# tiles (176 / 160 keys at d = 128, 80 at d = 256): their smoke against the oracle, the suite's block-size
# sweep with cuDNN in the same process, an A/B of the 176-key plan against the planner's; then the
# deterministic dQ's kernel times on the short rows. Needs .whl/ with the lark wheel (device-wheels.sh).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
F176=block_n=176,kv_stages=2,q_slots=1,o_stage=0
timeout 120 python3 tests/gpu/plan_smoke.py $F176 dense,causal,sliding_window,document,dropout_causal > $R/smoke-176.log 2>&1
echo "smoke 176 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke-176.log
timeout 120 python3 -m flashgen bench dense causal --sizes 2048,8192 --dtype bf16 --head-dim 128 --peers cudnn --directions fwd --kv-blocks 160,176 --out $R/sweep128 > $R/sweep128.log 2>&1
echo "sweep 128 rc $? $(( $(date +%s) - t0 ))s"
timeout 90 python3 -m flashgen bench dense causal --sizes 2048,8192 --dtype bf16 --head-dim 256 --peers cudnn --directions fwd --kv-blocks 80 --out $R/sweep256 > $R/sweep256.log 2>&1
echo "sweep 256 rc $? $(( $(date +%s) - t0 ))s"
timeout 90 python3 tests/gpu/switch_ab.py plan --fields $F176 --specs dense,causal --sizes 2048,8192 --rounds 4 --directions fwd --flex "" --cudnn "" > $R/ab-176.log 2>&1
echo "ab 176 rc $? $(( $(date +%s) - t0 ))s"
timeout $(( 570 - ($(date +%s) - t0) )) python3 tests/gpu/kernel_times.py --specs document,block_layout,sliding_window,key_padding --sizes 2048,8192 --peers flashgen-det > $R/kernel-times-det.log 2>&1
echo "det rc $? $(( $(date +%s) - t0 ))s"
tail -12 $R/sweep128.log; tail -8 $R/sweep256.log; tail -6 $R/ab-176.log
grep -e '^==' -e 'dq_kernel' -e 'backward_kernel' $R/kernel-times-det.log | cut -c1-110
