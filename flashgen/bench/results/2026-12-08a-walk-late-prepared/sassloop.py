"""SASS of a spec's persistent ws forward (sm_90a, bf16): the steady (Next) step loop's
static opcode counts and length. usage: FG_TREE=<tree> python sassloop.py spec d outdir"""
import os, sys, re, subprocess, collections, tempfile
if os.environ.get("FG_TREE"):
    sys.meta_path = [f for f in sys.meta_path if "editable" not in str(f).lower()]
    sys.path.insert(0, os.environ["FG_TREE"])
import flashgen
from flashgen.render.kernels import render_module
from flashgen.build.cache import _nvcc_flags, _write_sources, nvcc_path
name, d, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(out, exist_ok=True)
spec = flashgen.load(name)
src = render_module(spec, f"flashgen/specs/{name}.attn", "bf16", d, arch="sm_90a")
src = {k: v for k, v in src.items() if not k.startswith("backward")}
from pathlib import Path
_write_sources(src, Path(out))
cu = [k for k in src if k.endswith(".cu") and k.startswith("forward")][0]
flags = [f for f in _nvcc_flags("sm_90a", []) if f not in ("-Xcompiler", "-fPIC")]
subprocess.run([nvcc_path(), "-cubin", "-o", "fwd.cubin", *flags, cu], cwd=out, check=True)
nd = "/work/tools/nvd/nvidia/cu13/bin/nvdisasm"
sass = subprocess.run([nd, "-c", "fwd.cubin"], cwd=out, capture_output=True, text=True, check=True).stdout
open(os.path.join(out, "fwd.sass"), "w").write(sass)
