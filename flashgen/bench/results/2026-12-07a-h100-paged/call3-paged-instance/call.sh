#!/usr/bin/env bash
# 2026-12-07 call 2, branch paged-instance: (1) A/B of the paged instance at d = 64 (A: .whl/t_pi_off, the same
# headers with kPagedInstance = false, main's rule); (2) timeline.py --decode, B = 1 one row, d = 64 and 128;
# (3) cuDNN's decoding kernel's launch (ncu); (4) test_paged + test_varlen, poisoned.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT/r; mkdir -p $R; t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $R/gpu.txt
timeout 120 python3 tests/gpu/paged_ab.py header --other .whl/t_pi_off --d 64 --shapes prefill --pages 16 --packed --specs causal,dense --rounds 4 > $R/pi-d64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
timeout 150 python3 tests/gpu/timeline.py --decode --specs dense --sizes 4096,32768 --head-dim 64 > $R/tl-decode-d64.log 2>&1
echo "tl64 rc $? $(( $(date +%s) - t0 ))s"
timeout 60 ncu --kernel-name regex:'.*(fprop|fort|sdpa).*' --launch-skip 5 --launch-count 2 --section SpeedOfLight --section LaunchStats --section Occupancy python3 tests/gpu/kernel_times.py --specs dense --decode 1,1 --sizes 4096 --head-dim 64 --peers cudnn --direction fwd --calls 5 > $R/ncu-cudnn.log 2>&1
echo "ncu rc $? $(( $(date +%s) - t0 ))s"
grep -E "Kernel Name|^  [a-z_]+.*\(|Duration|Grid Size|Block Size|Registers|Shared Memory Per|DRAM Throughput|Elapsed|SM Active" $R/ncu-cudnn.log | head -30
grep -h "%" $R/pi-d64.log; cat $R/tl-decode-d64.log | grep -v "^ *$" | tail -6
FLASHGEN_POISON=1 timeout $(( 480 - ($(date +%s) - t0) )) python3 -m pytest -q -rf tests/gpu/test_paged.py -p no:cacheprovider > $R/gpu-tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -2 $R/gpu-tests.log
