#!/usr/bin/env bash
# consumer-rows: a consumer's dead tiles handed back without a GEMM (d = 64, three consumers)
# From a checkout of branch consumer-rows, carry [".whl"]: the lark wheel (../shared/tools/device-wheels.sh) and
# .whl/t_main, main's templates/ (git archive main templates | tar -x -C /tmp/m && cp -r /tmp/m/templates .whl/t_main).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FLASHGEN_CACHE_DIR=/tmp/fgcache || exit
R=$OUT; t0=$(date +%s); nvidia-smi --query-gpu=name,power.limit,driver_version --format=csv,noheader > $R/gpu.txt
S64=dense,causal,sliding_window,key_padding,document,alibi,softcap,prefix_lm,dropout_causal,causal_bottom_right
timeout 200 python3 - $S64 > $R/prebuild.log 2>&1 <<'PY'
import sys, time
from concurrent.futures import ThreadPoolExecutor
from flashgen import api
jobs = [(n, 64) for n in sys.argv[1].split(",")] + [("dense", 128), ("causal", 128)]
t = time.time()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda j: api.build(j[0], dtypes=["bf16", "fp16"], head_dims=[j[1]]), jobs))
print(f"prebuilt {len(jobs)} in {time.time() - t:.0f}s")
PY
echo "prebuild rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/prebuild.log
timeout 150 python3 tests/gpu/plan_smoke.py kv_stages=4 $S64 64 > $R/smoke64.log 2>&1
echo "smoke64 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke64.log
timeout 60 python3 tests/gpu/plan_smoke.py kv_stages=2 dense,causal 128 > $R/smoke128.log 2>&1
echo "smoke128 rc $? $(( $(date +%s) - t0 ))s"; tail -1 $R/smoke128.log
timeout 150 python3 tests/gpu/switch_ab.py header --other .whl/t_main --specs causal,dense,sliding_window,prefix_lm --sizes 2048,8192 --d 64 --directions fwd --cudnn causal,dense --flex "" --rounds 4 > $R/ab64.log 2>&1
echo "ab rc $? $(( $(date +%s) - t0 ))s"
left=$(( 560 - ($(date +%s) - t0) ))
[ $left -gt 60 ] && timeout $left python3 -m pytest -q -x tests/gpu/test_kernels.py > $R/tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 ))s"; tail -2 $R/tests.log
grep -E '^FAIL|^ERROR' $R/smoke64.log $R/smoke128.log | cut -c1-300 | head -8
sed -n '/against/,$p' $R/ab64.log
