#!/usr/bin/env bash
# 2026-12-06g call 2, branch decode-one: the one-consumer decoding instance (ForwardPlan.decode_rows)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 230 python3 -m pytest -q -rf tests/gpu/test_decode.py tests/gpu/test_paged.py tests/gpu/test_varlen.py -p no:cacheprovider > $R/gpu-tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests.log
timeout 110 python3 tests/gpu/paged_ab.py plan --fields decode_rows=0 --d 64 --shapes decode --pages 256 --specs dense,causal_bottom_right > $R/decode-ab-d64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
timeout 100 python3 -m flashgen bench --decode dense causal_bottom_right --sizes 4096,32768 --rows 1,16 --peers cudnn,flash --out $R/decode > $R/decode.log 2>&1
echo "decode rc $? $(( $(date +%s) - t0 ))s"
timeout 70 python3 tests/gpu/paged_ab.py plan --fields decode_rows=0 --d 128 --shapes decode --pages 256 --specs dense > $R/decode-ab-d128.log 2>&1
echo "ab128 rc $? $(( $(date +%s) - t0 ))s"
timeout $(( 585 - ($(date +%s) - t0) )) python3 tests/gpu/paged_ab.py plan --fields decode_rows=0 --d 128 --pages 16 --order sorted --specs dense > $R/paged16-sorted.log 2>&1
echo "sorted rc $? $(( $(date +%s) - t0 ))s"
rm -rf $R/decode/plots
tail -9 $R/decode-ab-d64.log; grep -A18 "^spec " $R/decode.log | cut -c1-110; tail -5 $R/decode-ab-d128.log; tail -7 $R/paged16-sorted.log
