#!/usr/bin/env bash
# The next session's first device call (prepared 2026-12-06e, not run), on main with the wide forward tiles:
# the GPU cases the 2026-12-06e calls did not reach, then the dense/causal grid at d = 64 / 128 / 256 with
# cuDNN and FlashAttention-2 beside (forward and forward+backward), then the wide-tile specs against
# FlexAttention. Needs .whl/ with the lark wheel (../shared/tools/device-wheels.sh).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 240 python3 -m pytest -q -rf tests/gpu/test_varlen.py tests/gpu/test_families.py -k "test_varlen or persistent_units or backward_families and (temperature-bf16-d64 or dropout_causal-bf16-d128 or prefix_lm-fp16-d128)" -p no:cacheprovider > $R/gpu-tests-rest.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests-rest.log
for d in 128 256 64; do
  timeout 100 python3 -m flashgen bench dense causal --sizes 2048,8192 --dtype bf16 --head-dim $d --peers cudnn,flash --out $R/grid$d > $R/grid$d.log 2>&1
  echo "grid d$d rc $? $(( $(date +%s) - t0 ))s"
done
timeout $(( 580 - ($(date +%s) - t0) )) python3 -m flashgen bench prefix_lm softcap causal_bottom_right --sizes 2048,8192 --dtype bf16 --head-dim 128 --peers flex --out $R/flex > $R/flex.log 2>&1
echo "flex rc $? $(( $(date +%s) - t0 ))s"
for f in grid128 grid256 grid64 flex; do grep -B3 -A12 "^spec " $R/$f.log | head -24; done
