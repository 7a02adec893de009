#!/usr/bin/env bash
# The device call after next_call.sh (prepared 2026-12-06g, not run), from branch `next-call` at 1172b4f or later
# (decode-persistent + tiny-timing + page-band + main), with next-call's templates before page-band in .whl/t_nobands:
#   mkdir -p .whl/t_nobands && git archive 09c1c89 templates | tar -x -C .whl/t_nobands --strip-components=1
# (09c1c89 is next-call before page-band: its forward.cu.j2 is the same, so the header A/B compiles in both positions)
# 1. test_paged (PageBand's new cases: pages of 16 at d = 64, 24 at d = 128, 8 at d = 256);
# 2. PageBand against PageWindow in the one-consumer decoding instance (headers), pages of 16 and 256, d = 128 and 64.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
FLASHGEN_POISON=1 timeout 200 python3 -m pytest -q -rf tests/gpu/test_paged.py -p no:cacheprovider > $R/gpu-tests-paged.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/gpu-tests-paged.log
timeout 150 python3 tests/gpu/paged_ab.py header --other .whl/t_nobands --d 128 --shapes decode --pages 16,256 --specs dense,causal_bottom_right > $R/bands-ab-d128.log 2>&1
echo "ab128 rc $? $(( $(date +%s) - t0 ))s"
timeout $(( 560 - ($(date +%s) - t0) )) python3 tests/gpu/paged_ab.py header --other .whl/t_nobands --d 64 --shapes decode --pages 16 --specs dense > $R/bands-ab-d64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
grep -h "%" $R/bands-ab-d128.log $R/bands-ab-d64.log
