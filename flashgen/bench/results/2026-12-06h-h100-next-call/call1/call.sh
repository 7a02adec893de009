#!/usr/bin/env bash
# The next device call (prepared 2026-12-06g, not run), from a working tree on branch `next-call`:
# decode-persistent (one consumer in the lean instance for padded batches of <= 64 query rows) + tiny-timing
# (bench.timing's spin before short runs whose issue outlasts the L2 clearing) + main.
# 1. the tests call 5 did not reach (test_decode's padded document case, test_kernels' one-row cases, the GPT demo);
# 2. the padded one-tile rows, A/B twice with the spin: are the readings steady now (call 5: 0.035-0.164 ms)?
# 3. kv_splits's heuristic against a sweep of split counts (decoding at 4k keys: 0.79-0.91x the peers);
# 4. the decoding sweep against FA2 and cuDNN under the spin.
# If 1 passes and 2 is steady and not a loss, merge next-call into main (regenerate generated/, run CI).
# Needs .whl/ with the lark wheel (../shared/tools/device-wheels.sh).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 260 python3 -m pytest -q -rf tests/gpu/test_decode.py tests/gpu/test_demo_gpt.py tests/gpu/test_kernels.py -k "test_decode or test_demo or bf16-64-1-2-1-1-1-False or bf16-64-1-2-1-1-4096-False" -p no:cacheprovider > $R/gpu-tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests.log
for run in 1 2; do
  timeout 70 python3 tests/gpu/paged_ab.py plan --fields decode_rows=0 --d 64 --shapes batch --pages 256 --specs causal,dense > $R/batch-ab-d64-$run.log 2>&1
  echo "ab64 $run rc $? $(( $(date +%s) - t0 ))s"
done
timeout 100 python3 tests/gpu/splits_sweep.py > $R/splits.log 2>&1
echo "splits rc $? $(( $(date +%s) - t0 ))s"
timeout $(( 585 - ($(date +%s) - t0) )) python3 -m flashgen bench --decode dense causal_bottom_right --sizes 4096,32768 --rows 1,16 --peers cudnn,flash --out $R/decode > $R/decode.log 2>&1
echo "decode rc $? $(( $(date +%s) - t0 ))s"; rm -rf $R/decode/plots
grep -h "%" $R/batch-ab-d64-*.log; grep -v compiling $R/splits.log | cut -c1-160; grep -A18 "^spec " $R/decode.log | cut -c1-110
