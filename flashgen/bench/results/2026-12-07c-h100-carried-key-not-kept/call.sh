#!/usr/bin/env bash
# carried-key: the carried unit's O stored from a packed (Q tile, batch, head) index instead of
# unit_at + the Cta again. From a checkout of branch carried-key, carry [".whl"]: the lark wheel,
# .whl/t_main (main's templates/) and .whl/main_tree (main's flashgen, templates, grammar, tests/gpu).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
timeout 150 python3 tests/gpu/plan_smoke.py kv_stages=2 dense,causal,sliding_window,key_padding,document 128 > $R/smoke128.log 2>&1
echo "smoke128 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke128.log
timeout 100 python3 tests/gpu/plan_smoke.py kv_stages=4 causal,dense,sliding_window 64 > $R/smoke64.log 2>&1
echo "smoke64 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke64.log
# the timelines (their own trees and caches), main's and the branch's, one at a time
(cd .whl/main_tree && PYTHONPATH=/tmp/site:$PWD timeout 150 python3 tests/gpu/timeline.py --families wgmma_ws_persistent --specs dense,sliding_window,causal --sizes 2048 --head-dim 128 --copy /tmp/tl_main > $R/tl-main.log 2>&1)
(timeout 150 python3 tests/gpu/timeline.py --families wgmma_ws_persistent --specs dense,sliding_window,causal --sizes 2048 --head-dim 128 --copy /tmp/tl_branch > $R/tl-branch.log 2>&1)
echo "timelines $(( $(date +%s) - t0 ))s"
timeout 120 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs dense,causal,sliding_window,key_padding --sizes 2048,8192 --d 128 --directions fwd --cudnn dense,causal --flex "" --rounds 4 > $R/ab128.log 2>&1
echo "ab128 rc $? $(( $(date +%s) - t0 ))s"
timeout 90 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs causal,dense,sliding_window --sizes 2048,8192 --d 64 --directions fwd --cudnn causal,dense --flex "" --rounds 4 > $R/ab64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
left=$(( 570 - ($(date +%s) - t0) ))
[ $left -gt 60 ] && timeout $left python3 -m pytest -q -x tests/gpu/test_kernels.py > $R/tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests.log
grep -E '^FAIL|^ERROR' $R/smoke64.log $R/smoke128.log | cut -c1-300 | head -8
for f in tl-main tl-branch; do echo "== $f"; grep -v -i "compil\|building\|ready" $R/$f.log | tail -12; done
sed -n '/against/,$p' $R/ab128.log $R/ab64.log
