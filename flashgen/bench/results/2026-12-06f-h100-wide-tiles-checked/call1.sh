#!/usr/bin/env bash
# 2026-12-06f call 1, on main 093f606 + tests/gpu/paged_ab.py: the 18 GPU cases the 2026-12-06e calls did not
# reach; the dense/causal grid at d = 128 against cuDNN and FA2; the wide tiles against the old ones on a paged
# cache and on split-KV decoding (paged_ab.py); the decoding sweep against its peers.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 230 python3 -m pytest -q -rf tests/gpu/test_varlen.py tests/gpu/test_families.py -k "test_varlen or persistent_units or backward_families and (temperature-bf16-d64 or dropout_causal-bf16-d128 or prefix_lm-fp16-d128)" -p no:cacheprovider > $R/gpu-tests-rest.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests-rest.log
timeout 110 python3 -m flashgen bench dense causal --sizes 2048,8192 --dtype bf16 --head-dim 128 --peers cudnn,flash --out $R/grid128 > $R/grid128.log 2>&1
echo "grid d128 rc $? $(( $(date +%s) - t0 ))s"
timeout 100 python3 tests/gpu/paged_ab.py --fields block_n=128,q_slots=2,o_stage=0 > $R/paged-ab.log 2>&1
echo "paged rc $? $(( $(date +%s) - t0 ))s"
timeout $(( 580 - ($(date +%s) - t0) )) python3 -m flashgen bench --decode dense causal_bottom_right --sizes 4096,32768 --rows 1,16 --peers cudnn,flash --out $R/decode > $R/decode.log 2>&1
echo "decode rc $? $(( $(date +%s) - t0 ))s"
grep -A12 "^spec " $R/grid128.log | head -16; tail -14 $R/paged-ab.log; grep -A10 "^spec " $R/decode.log | head -12
