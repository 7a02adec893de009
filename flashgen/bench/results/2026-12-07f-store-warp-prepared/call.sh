#!/usr/bin/env bash
# store-warp (prepared 2026-12-07, not GPU-run): the persistent consumer only writes O into its output stage and
# the rows' sums into a note; the producer's warp 2 stores the stage by TMA and the lse. From a checkout of branch
# store-warp, carry [".whl"]: the lark wheel (../shared/tools/device-wheels.sh), .whl/t_main (main's templates/:
# git archive main templates | tar -x -C /tmp/m && cp -r /tmp/m/templates .whl/t_main) and .whl/main_tree
# (git archive main flashgen templates grammar tests/gpu | tar -x -C .whl/main_tree).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
# correctness first: every d = 128 persistent path (dense/causal at 160 keys and one Q slot; the sliding
# window, document, key padding at 128 keys and two), more units than SMs, GQA, a short call
timeout 170 python3 tests/gpu/plan_smoke.py kv_stages=2 dense,sliding_window,document,key_padding 128 > $R/smoke128.log 2>&1
echo "smoke128 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke128.log
# d = 64: three consumers take the output stage on this branch (the planner)
timeout 100 python3 tests/gpu/plan_smoke.py kv_stages=4 causal,dense,sliding_window 64 > $R/smoke64.log 2>&1
echo "smoke64 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke64.log
(cd .whl/main_tree && PYTHONPATH=/tmp/site:$PWD timeout 100 python3 tests/gpu/timeline.py --families wgmma_ws_persistent --specs dense,sliding_window --sizes 2048 --head-dim 128 --copy /tmp/tl_main > $R/tl-main.log 2>&1)
(cd .whl/main_tree && PYTHONPATH=/tmp/site:$PWD timeout 80 python3 tests/gpu/timeline.py --families wgmma_ws_persistent --specs causal --sizes 2048 --head-dim 64 --copy /tmp/tl_main64 > $R/tl-main64.log 2>&1)
timeout 100 python3 tests/gpu/timeline.py --store --families wgmma_ws_persistent --specs dense,sliding_window --sizes 2048 --head-dim 128 --copy /tmp/tl_branch > $R/tl-branch.log 2>&1
timeout 80 python3 tests/gpu/timeline.py --store --families wgmma_ws_persistent --specs causal --sizes 2048 --head-dim 64 --copy /tmp/tl_branch64 > $R/tl-branch64.log 2>&1
echo "timelines $(( $(date +%s) - t0 ))s"
timeout 150 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs dense,causal,sliding_window,key_padding --sizes 2048,8192 --d 128 --directions fwd --cudnn dense,causal --flex "" --rounds 6 > $R/ab128.log 2>&1
echo "ab128 rc $? $(( $(date +%s) - t0 ))s"
# d = 64 in this tree, the stage and the store warp (B) against the plan without the stage (A: O from the
# fragments, main's path): a header A/B would run main's header with this planner's stage
timeout 90 python3 tests/gpu/switch_ab.py plan --fields o_stage=0 --specs causal,dense,sliding_window --sizes 2048,8192 --d 64 --directions fwd --cudnn causal,dense --flex "" --rounds 4 > $R/ab64.log 2>&1
echo "ab64 rc $? $(( $(date +%s) - t0 ))s"
# test_kernels.py: the second call (tests.sh), which this one leaves no time for
grep -E '^FAIL|^ERROR' $R/smoke128.log $R/smoke64.log | cut -c1-300 | head -8
for f in tl-main tl-branch tl-main64 tl-branch64; do echo "== $f"; grep span $R/$f.log | sed 's/ | per tile:[^|]*//'; done
sed -n '/against/,$p' $R/ab128.log $R/ab64.log
