#!/usr/bin/env bash
# Where the persistent forward's O store at a unit's start goes (timeline.py --store, main), d = 128 and 64.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version,clocks.max.sm --format=csv,noheader > $R/gpu.txt
timeout 200 python3 tests/gpu/timeline.py --store --families wgmma_ws_persistent --specs dense,sliding_window,causal --sizes 2048,8192 --head-dim 128 --copy /tmp/tl128 > $R/tl128.log 2>&1
echo "tl128 rc $? $(( $(date +%s) - t0 ))s"
timeout 120 python3 tests/gpu/timeline.py --store --families wgmma_ws_persistent --specs causal,dense --sizes 2048 --head-dim 64 --copy /tmp/tl64 > $R/tl64.log 2>&1
echo "tl64 rc $? $(( $(date +%s) - t0 ))s"
cat $R/gpu.txt; grep -h "span" $R/tl128.log $R/tl64.log | sed 's/ | per tile.*| store/ | store/'
