"""Tile classification is sound: compiled for the host with nvcc, each shipped spec's
tile_class() is checked against its mask() element by element on random tiles.

kSkip must mean "false everywhere", kFull "true everywhere"; and the masks the kernels
promise to skip statically (causal, bottom-right causal, sliding window, prefix-LM,
key padding by lengths) must actually produce skipped and full tiles."""
import re
import subprocess

import pytest
import torch

import flashgen
from flashgen.render.variant import render_variant
from flashgen.render.kernels import support_headers
from flashgen.runtime.examples import example_params

B, H, N = 2, 2, 200
# masks whose tiles must be provably skipped, and provably full, by the static analysis
MUST_SKIP = {"causal", "causal_bottom_right", "sliding_window", "prefix_lm", "key_padding",
             "alibi", "dilated", "document", "alibi_window_softcap", "strided_causal",
             "butterfly_causal", "dropout_causal", "softcap"}
MUST_FULL = {"causal", "causal_bottom_right", "sliding_window", "prefix_lm", "key_padding",
             "alibi", "alibi_window_softcap", "softcap"}


def _param_setup(spec) -> list[str]:
    """C++ statements that fill Params p with example values (same as the GPU tests')."""
    gen = torch.Generator().manual_seed(0)
    values = example_params(spec, B, H, N, N, gen, with_defaults=True)
    lines = []
    for p in spec.params:
        v = values[p.name]
        if p.is_tensor:
            c = {"f32": "float", "i32": "int", "bool": "bool"}[p.element]
            flat = v.flatten().tolist()
            text = ", ".join(("true" if x else "false") if p.element == "bool" else repr(x)
                             for x in flat)
            lines.append(f"static const {c} data_{p.name}[] = {{{text}}};")
            lines.append(f"p.{p.name}.data = data_{p.name};")
            for d, (size, stride) in enumerate(zip(v.shape, v.stride())):
                lines.append(f"p.{p.name}.size[{d}] = {size}; p.{p.name}.stride[{d}] = {stride};")
        else:
            value = {"bool": lambda x: "true" if x else "false"}.get(p.element, repr)(v)
            lines.append(f"p.{p.name} = {value};")
    return lines


PROGRAM = """
#include <cstdio>
#include <cstdlib>
#include "variant.cuh"
using V = NS::Variant;
int main() {
  V::Params p;
  SETUP
  long counts[3] = {0, 0, 0}, wrong = 0;
  srand(1);
  for (int trial = 0; trial < 4000; ++trial) {
    const int b = rand() % BATCH, h = rand() % HEADS;
    // tiles of kernel-like sizes and random ones, anywhere in the sequence
    const int bm = trial % 2 ? 16 << (rand() % 4) : 1 + rand() % 50;
    const int bn = trial % 2 ? 16 << (rand() % 4) : 1 + rand() % 50;
    const int q_lo = rand() % LEN, kv_lo = rand() % LEN;
    const int q_hi = q_lo + bm - 1 < LEN ? q_lo + bm - 1 : LEN - 1;
    const int kv_hi = kv_lo + bn - 1 < LEN ? kv_lo + bn - 1 : LEN - 1;
    const int c = V::tile_class(p, b, h, q_lo, q_hi, kv_lo, kv_hi, LEN, LEN);
    counts[c]++;
    if (c == 2) continue;
    for (int q = q_lo; q <= q_hi; ++q)
      for (int kv = kv_lo; kv <= kv_hi; ++kv)
        if (V::mask(p, b, h, q, kv, LEN, LEN) != (c == 1)) { ++wrong; q = q_hi; break; }
  }
  printf("skip %ld full %ld partial %ld wrong %ld\\n", counts[0], counts[1], counts[2], wrong);
  return 0;
}
"""


@pytest.mark.nvcc
@pytest.mark.parametrize("name", [n for n in flashgen.shipped() if flashgen.load(n).mask is not None])
def test_tile_class_is_sound(name, tmp_path):
    spec = flashgen.load(name)
    for file_name, text in {**support_headers(), "variant.cuh": render_variant(spec, "x")}.items():
        (tmp_path / file_name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file_name).write_text(text)
    source = (PROGRAM.replace("NS", f"fg_{name}").replace("SETUP", "\n  ".join(_param_setup(spec)))
              .replace("BATCH", str(B)).replace("HEADS", str(H)).replace("LEN", str(N)))
    (tmp_path / "main.cu").write_text(source)
    build = subprocess.run(["nvcc", "-std=c++17", "-O1", "-I", str(tmp_path), "-o",
                            str(tmp_path / "main"), str(tmp_path / "main.cu")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True, check=True).stdout
    skip, full, partial, wrong = map(int, re.findall(r"\d+", out))
    assert wrong == 0, f"{name}: {wrong} tiles classified skip/full that are not ({out})"
    if name in MUST_SKIP:
        assert skip > 0, f"{name}: no tile skipped statically ({out})"
    if name in MUST_FULL:
        assert full > 0, f"{name}: no tile proved fully visible ({out})"
