#!/usr/bin/env bash
# Prepared, not run (the session's device time ran out): the SASS of the dense d = 128 forward module, main's
# (.whl/main_tree) and branch store-split's (run from a checkout of store-split, carry [".whl"]), to see
# whether ptxas waits for the carried P V before store_rows_tma's lse stores or barrier (PERF.md).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
which cuobjdump nvdisasm
sass() {  # tree name
  (cd $1 && PYTHONPATH=/tmp/site:$PWD python3 - $2 <<'PY'
import sys, subprocess, pathlib, os
from flashgen.build import cache
from flashgen.render.kernels import render_module
import flashgen
name = sys.argv[1]
spec = flashgen.load("dense")
src = render_module(spec, "flashgen/specs/dense.attn", "bf16", 128, arch="sm_90a")
src = {k: v for k, v in src.items() if not k.startswith("backward")}
d = pathlib.Path(f"/tmp/sass_{name}"); d.mkdir(exist_ok=True); cache._write_sources(src, d)
flags = cache._nvcc_flags("sm_90a", [])
cu = [k for k in src if k.endswith(".cu")][0]
subprocess.run([cache._require_nvcc(), "-cubin", "-o", "k.cubin", *flags, cu], cwd=d, check=True)
out = os.environ["OUT"]
subprocess.run(f"cuobjdump -sass k.cubin > {out}/{name}.sass", shell=True, cwd=d, check=True)
PY
  )
}
sass . split & sass .whl/main_tree main & wait
ls -la $OUT; gzip $OUT/*.sass; ls -la $OUT
