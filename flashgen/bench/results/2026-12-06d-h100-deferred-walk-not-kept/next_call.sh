#!/usr/bin/env bash
# next session's first call: wider forward K/V tiles (BN 176 / 160 at d = 128, 80 at d = 256) by the
# plan switch, A/B against the planner's, cuDNN beside; their smoke; then the deterministic dQ's kernel times
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
F176=block_n=176,kv_stages=2,q_slots=1,o_stage=0
F160=block_n=160,kv_stages=2,q_slots=1,o_stage=1
timeout 120 python3 tests/gpu/plan_smoke.py $F176 dense,causal,sliding_window,document,dropout_causal > $R/smoke-176.log 2>&1; echo "smoke176 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke-176.log
timeout 100 python3 tests/gpu/switch_ab.py plan --fields $F176 --specs dense,causal --sizes 2048,8192 --rounds 4 --directions fwd --flex "" > $R/ab-176.log 2>&1; echo "ab176 rc $? $(( $(date +%s) - t0 ))s"
timeout 100 python3 tests/gpu/switch_ab.py plan --fields $F160 --specs dense,causal --sizes 2048,8192 --rounds 4 --directions fwd --flex "" > $R/ab-160.log 2>&1; echo "ab160 rc $? $(( $(date +%s) - t0 ))s"
timeout 100 python3 tests/gpu/switch_ab.py plan --fields block_n=80 --d 256 --specs dense,causal --sizes 2048,8192 --rounds 4 --directions fwd --flex "" > $R/ab-d256-80.log 2>&1; echo "ab256 rc $? $(( $(date +%s) - t0 ))s"
timeout $(( 570 - ($(date +%s) - t0) )) python3 tests/gpu/kernel_times.py --specs document,block_layout,sliding_window,key_padding --sizes 2048,8192 --peers flashgen-det > $R/kernel-times-det.log 2>&1; echo "det rc $? $(( $(date +%s) - t0 ))s"
for f in ab-176 ab-160 ab-d256-80; do echo "== $f"; tail -5 $R/$f.log; done
grep -e '^==' -e 'dq_kernel' -e 'backward_kernel' $R/kernel-times-det.log | cut -c1-110
