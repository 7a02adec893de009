#!/usr/bin/env bash
# Prepared 2026-12-08: branch walk-late (= desc-offsets + the persistent consumers' tile walk
# advanced after the turn's hand-over). From a checkout of the branch with main's templates
# folder in .whl/t_main and main's forward_sm90_ws.cuh in .whl/ws_main.cuh; carry [".whl"].
# In order of need, each step's table printed as it ends (device time was short): 1. both
# changes against main (header A/B over the templates folder), d = 64 forward, cuDNN beside;
# 2. the GPU tests of the kernel families wgmma.cuh reaches (poisoned outputs, the float64
# oracle); 3. d = 128 forward and forward+backward, d = 64 forward+backward; 4. the walk alone
# (forward_sm90_ws.cuh's two texts, both on the branch's wgmma.cuh), d = 64 forward. ~450 s.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache FLASHGEN_QUIET=1 || exit
R=$OUT; t0=$(date +%s)
nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader | tee $R/gpu.txt
ab() {  # name timeout switch_ab arguments...
  local name=$1 limit=$2; shift 2
  timeout $limit python3 tests/gpu/switch_ab.py header --flex '' --rounds 4 --sizes 2048,8192 "$@" > $R/$name.log 2>&1
  echo "$name rc $? $(( $(date +%s) - t0 ))s"; sed -n '/against/,/^$/p' $R/$name.log
}
ab ab64 120 --other .whl/t_main --specs causal,dense,sliding_window --d 64 --directions fwd --cudnn causal,dense
FLASHGEN_POISON=1 timeout 200 python3 -m pytest -q -x tests/gpu/test_kernels.py tests/gpu/test_families.py > $R/tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests.log
grep -E '^FAILED|^ERROR' $R/tests.log | cut -c1-300 | head -8
ab ab128 100 --other .whl/t_main --specs causal,dense --d 128 --directions fwd,fwd+bwd --cudnn causal,dense
ab walk64 70 --header kernels/forward_sm90_ws.cuh --other .whl/ws_main.cuh --specs causal,dense --d 64 --directions fwd --cudnn ''
ab ab64fb 80 --other .whl/t_main --specs causal,dense --d 64 --directions fwd+bwd --cudnn causal,dense
