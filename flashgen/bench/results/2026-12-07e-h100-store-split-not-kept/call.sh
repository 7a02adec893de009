#!/usr/bin/env bash
# store-split: the carried unit's row scales and lse under its last P V (and carried-key). From a checkout of
# branch store-split, carry [".whl"]: the lark wheel, .whl/t_main (main's templates/), .whl/main_tree (main's tree).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
timeout 150 python3 tests/gpu/plan_smoke.py kv_stages=2 dense,sliding_window,document 128 > $R/smoke128.log 2>&1
echo "smoke128 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke128.log
(cd .whl/main_tree && PYTHONPATH=/tmp/site:$PWD timeout 100 python3 tests/gpu/timeline.py --families wgmma_ws_persistent --specs dense,sliding_window --sizes 2048 --head-dim 128 --copy /tmp/tl_main > $R/tl-main.log 2>&1)
timeout 100 python3 tests/gpu/timeline.py --store --families wgmma_ws_persistent --specs dense,sliding_window --sizes 2048 --head-dim 128 --copy /tmp/tl_branch > $R/tl-branch.log 2>&1
echo "timelines $(( $(date +%s) - t0 ))s"
timeout 150 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs dense,causal,sliding_window,key_padding --sizes 2048,8192 --d 128 --directions fwd --cudnn dense,causal --flex "" --rounds 6 > $R/ab128.log 2>&1
echo "ab128 rc $? $(( $(date +%s) - t0 ))s"
timeout 60 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs dense,causal --sizes 2048 --d 256 --directions fwd --cudnn dense,causal --flex "" --rounds 4 > $R/ab256.log 2>&1
echo "ab256 rc $? $(( $(date +%s) - t0 ))s"
left=$(( 560 - ($(date +%s) - t0) ))
[ $left -gt 60 ] && timeout $left python3 -m pytest -q -x tests/gpu/test_kernels.py > $R/tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/tests.log
grep -E '^FAIL|^ERROR' $R/smoke128.log | cut -c1-300 | head -8
for f in tl-main tl-branch; do echo "== $f"; grep span $R/$f.log | sed 's/ | per tile:[^|]*//'; done
sed -n '/against/,$p' $R/ab128.log $R/ab256.log
