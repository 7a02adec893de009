#!/usr/bin/env bash
# Call 3 of 2026-12-06h, from main + kv_splits's one-wave heuristic (uncommitted tree):
# 1. the split count against small batches (B x H = 8..64 CTAs) - does one wave of splits win?
# 2. decoding at B = 1 against FA2 and cuDNN (split-KV's ground);
# 3. test_decode, test_paged, test_varlen on this tree.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
timeout 120 python3 tests/gpu/splits_sweep.py --specs dense --shapes 1x8,1x16,2x16,4x16 --rows 1 --splits 1,2,4,8,16,32 > $R/splits-small.log 2>&1
echo "splits rc $? $(( $(date +%s) - t0 ))s"
timeout 120 python3 -m flashgen bench --decode dense --batch 1 --sizes 4096,32768,131072 --rows 1,16 --head-dim 64,128 --peers cudnn,flash --out $R/decode-b1 > $R/decode-b1.log 2>&1
echo "decode rc $? $(( $(date +%s) - t0 ))s"; rm -rf $R/decode-b1/plots
FLASHGEN_POISON=1 timeout $(( 400 - ($(date +%s) - t0) )) python3 -m pytest -q -rf tests/gpu/test_decode.py tests/gpu/test_paged.py -p no:cacheprovider > $R/gpu-tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests.log
grep -v compiling $R/splits-small.log | cut -c1-200; grep -A14 "^spec " $R/decode-b1.log | cut -c1-110
