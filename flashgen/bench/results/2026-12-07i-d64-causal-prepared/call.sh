#!/usr/bin/env bash
# d = 64 causal at N = 2048 against cuDNN (0.91x on 2026-12-07h, 0.82x on 2026-12-07l): first a repeat of
# main's forward against cuDNN with nothing else on the machine, then where the time goes: the timeline of
# our units (causal against dense), and cuDNN's kernel and ours under ncu (--set full). From a checkout of
# main, carry [".whl"] (the lark wheel and .whl/t_main, main's templates, for the A/B's other side). ~330 s.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; D=flashgen/bench/results/2026-12-07i-d64-causal-prepared; t0=$(date +%s)
nvidia-smi --query-gpu=name,power.limit,driver_version,clocks.max.sm --format=csv,noheader > $R/gpu.txt
# 1. main against main (both positions the same templates) with cuDNN in the same process
timeout 120 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs causal,dense --sizes 2048,8192 --d 64 --directions fwd --cudnn causal,dense --flex "" --rounds 4 > $R/ab64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
# 2. our units, causal against dense: tile rate, a unit's time past its tiles, waits per tile, idle SMs
timeout 100 python3 tests/gpu/timeline.py --families wgmma_ws_persistent --specs causal,dense --sizes 2048 --head-dim 64 --producer > $R/tl64.log 2>&1
echo "timeline rc $? $(( $(date +%s) - t0 ))s"
# 3. ncu, one launch each (the module is in the cache from step 1)
for p in cudnn:'regex:fprop|sdpa|cudnn' flashgen:'regex:forward_kernel'; do
  timeout 70 ncu --clock-control none --kernel-name "${p#*:}" --launch-skip 3 --launch-count 1 --set full -o $R/${p%%:*} python3 $D/ncu_drive.py ${p%%:*} causal 2048 64 > $R/ncu-${p%%:*}.log 2>&1
  echo "ncu ${p%%:*} rc $? $(( $(date +%s) - t0 ))s"
  ncu --import $R/${p%%:*}.ncu-rep --page details > $R/${p%%:*}-details.txt 2>&1
  ncu --import $R/${p%%:*}.ncu-rep --page raw --csv > $R/${p%%:*}-raw.csv 2>&1
done
grep -v compiling $R/tl64.log | tail -30
for f in cudnn flashgen; do echo "== $f"; grep -E '  [a-z_]+.*(Kernel|kernel)|Grid Size|Block Size|Registers Per|Dynamic Shared|Block Limit (Reg|Shared|Warps)|Achieved Occupancy|^ +Duration|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|Warp Cycles Per Issued|No Eligible' $R/$f-details.txt | head -22; done
sed -n '/against/,$p' $R/ab64.log | head -20
