"""The SASS of a shipped spec's forward units (sm_90a, bf16), for loopmix.py: renders the
forward module as flashgen builds it, compiles it to a cubin with the build's own flags and
disassembles it into OUTDIR/fwd.sass. CPU only: needs nvcc and nvdisasm (the
`nvidia-cuda-nvdisasm` wheel: `pip download nvidia-cuda-nvdisasm`, unzip; its path in
$NVDISASM, else nvdisasm on PATH). FG_TREE: a checkout other than the installed one.

    FG_TREE=<tree> python sassloop.py SPEC HEAD_DIM OUTDIR
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

if os.environ.get("FG_TREE"):  # that tree's package, not the editable install's
    sys.meta_path = [f for f in sys.meta_path if "editable" not in str(f).lower()]
    sys.path.insert(0, os.environ["FG_TREE"])
import flashgen  # noqa: E402
from flashgen.build.cache import _nvcc_flags, _write_sources, nvcc_path  # noqa: E402
from flashgen.render.kernels import render_module  # noqa: E402

if len(sys.argv) != 4:
    sys.exit(__doc__)
name, d, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
nvdisasm = os.environ.get("NVDISASM") or shutil.which("nvdisasm")
if not nvdisasm or nvcc_path() is None:
    sys.exit("sassloop.py: needs nvcc on PATH and nvdisasm ($NVDISASM or on PATH)")
out.mkdir(parents=True, exist_ok=True)
sources = render_module(flashgen.load(name), f"flashgen/specs/{name}.attn", "bf16", d,
                        arch="sm_90a")
sources = {k: v for k, v in sources.items() if not k.startswith("backward")}
_write_sources(sources, out)
cu = next(k for k in sources if k.startswith("forward") and k.endswith(".cu"))
# the build's flags less -Xcompiler -fPIC, which a cubin has no host code for
flags = [f for f in _nvcc_flags("sm_90a", []) if f not in ("-Xcompiler", "-fPIC")]
subprocess.run([nvcc_path(), "-cubin", "-o", "fwd.cubin", *flags, cu], cwd=out, check=True)
sass = subprocess.run([nvdisasm, "-c", "fwd.cubin"], cwd=out, capture_output=True, text=True,
                      check=True).stdout
(out / "fwd.sass").write_text(sass)
print(out / "fwd.sass")
