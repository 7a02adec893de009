#!/usr/bin/env bash
# Prepared 2026-12-07, not run (no device time left): where d = 64 causal at N = 2048 loses to cuDNN
# (0.91x), now that the stream's length is ruled out (PERF.md, "the short unit first"). From a checkout of
# main, carry [".whl"] (the lark wheel). ~300 s.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
# 1. our units, causal against dense (same units, same tiles a step): the tile rate, a unit's time past
#    its tiles, the waits per tile, and the span against the SMs' busy time (idle SMs at the end)
timeout 110 python3 tests/gpu/timeline.py --families wgmma_ws_persistent --specs causal,dense --sizes 2048 --head-dim 64 --producer > $R/tl64.log 2>&1
echo "timeline rc $? $(( $(date +%s) - t0 ))s"
# 2. cuDNN's d = 64 causal kernel and ours under ncu: grid, CTA size, registers, shared memory, CTAs an SM,
#    the tensor pipe's and the issue slots' use
KT="tests/gpu/kernel_times.py --specs causal --sizes 2048 --head-dim 64 --direction fwd --calls 4"
timeout 100 ncu --kernel-name regex:'fprop|flash|cudnn' --launch-skip 3 --launch-count 1 --section LaunchStats --section Occupancy --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats -o $R/cudnn python3 $KT --peers cudnn > $R/ncu-cudnn.log 2>&1
echo "ncu cudnn rc $? $(( $(date +%s) - t0 ))s"
timeout 100 ncu --kernel-name regex:'forward_kernel_sm90_ws' --launch-skip 3 --launch-count 1 --section LaunchStats --section Occupancy --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats -o $R/ours python3 $KT --peers "" > $R/ncu-ours.log 2>&1
echo "ncu ours rc $? $(( $(date +%s) - t0 ))s"
for f in cudnn ours; do ncu --import $R/$f.ncu-rep --print-summary none > $R/$f-details.txt 2>&1; done
grep -v compiling $R/tl64.log | tail -40
for f in cudnn ours; do echo "== $f"; grep -E 'Kernel|Grid Size|Block Size|Registers Per|Shared Memory Config|Dynamic Shared|Block Limit|Achieved Occupancy|Duration|Compute \(SM\) Throughput|Tensor|Issue Slots|Warp Cycles Per Issued' $R/$f-details.txt | head -30; done
