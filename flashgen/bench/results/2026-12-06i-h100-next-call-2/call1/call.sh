#!/usr/bin/env bash
# The next device call (prepared 2026-12-06h, not run), from branch `next-call-2` (main + page-band-prefill +
# combine-batched), against main's templates in .whl/t_main:
#   mkdir -p .whl/t_main && git archive main templates | tar -x -C .whl/t_main --strip-components=1
# 1. test_paged + test_varlen + test_decode (the general instance's every caller, the combine kernel), poisoned;
# 2. prefill from 16- and 24-row pages at d = 128 and 64 (A: PageWindow, B: bands), with the packed batch and
#    256-row pages as the no-change rows (the general instance without pages, and nested tiles);
# 3. B = 1 decoding (split-KV + the combine kernel; A: main's combine, B: the batched one), contiguous and paged;
# 4. where a B = 1 decoding call's time goes (kernel_times.py --decode) beside cuDNN and FA2.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 220 python3 -m pytest -q -rf tests/gpu/test_paged.py tests/gpu/test_varlen.py tests/gpu/test_decode.py -p no:cacheprovider > $R/gpu-tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests.log
timeout 120 python3 tests/gpu/paged_ab.py header --other .whl/t_main --d 128 --shapes prefill --pages 256,16,24 --packed --specs dense,causal > $R/bands-prefill-d128.log 2>&1
echo "ab128 rc $? $(( $(date +%s) - t0 ))s"
timeout 70 python3 tests/gpu/paged_ab.py header --other .whl/t_main --d 64 --shapes prefill --pages 256,16 --packed --specs causal > $R/bands-prefill-d64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
timeout 60 python3 tests/gpu/paged_ab.py header --other .whl/t_main --d 64 --shapes single --pages 256 --specs dense --rounds 6 > $R/combine-b1-d64.log 2>&1
echo "combine rc $? $(( $(date +%s) - t0 ))s"
timeout 60 python3 tests/gpu/paged_ab.py header --other .whl/t_nopdl --d 64 --shapes single --pages 256 --specs dense --rounds 6 > $R/pdl-b1-d64.log 2>&1
echo "pdl rc $? $(( $(date +%s) - t0 ))s"
timeout $(( 585 - ($(date +%s) - t0) )) python3 tests/gpu/kernel_times.py --specs dense --decode 1,1 --sizes 4096,32768 --head-dim 64 --peers cudnn,flash --direction fwd --calls 20 --width 110 > $R/kt-b1-d64.log 2>&1
echo "kt rc $? $(( $(date +%s) - t0 ))s"
grep -h "%" $R/bands-prefill-d128.log $R/bands-prefill-d64.log $R/combine-b1-d64.log $R/pdl-b1-d64.log; grep -v compiling $R/kt-b1-d64.log | cut -c1-170
