"""generated/ is exactly what `flashgen generate` writes for the shipped specs, and the
generated CUDA compiles for sm_80 and sm_90a with the local nvcc (compile only)."""
import re
import subprocess
from pathlib import Path

import pytest

import flashgen
from flashgen import resources
from flashgen.cli import main

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "generated"


def test_generate_reproduces_generated_byte_for_byte(tmp_path):
    for name in flashgen.shipped():
        for path in flashgen.generate(name, tmp_path):
            checked_in = GENERATED / path.relative_to(tmp_path)
            assert checked_in.is_file(), f"{checked_in} is missing: run `flashgen generate {name}`"
            assert path.read_bytes() == checked_in.read_bytes(), \
                f"{checked_in} is stale: run `flashgen generate {name}`"
    expected = {n for n in flashgen.shipped()}
    assert {p.name for p in GENERATED.iterdir() if p.is_dir()} == expected


def test_generated_code_points_back_to_the_spec():
    text = (GENERATED / "alibi" / "variant.cuh").read_text()
    assert "flashgen/specs/alibi.attn:5: mask  = causal" in text
    assert "flashgen/specs/alibi.attn:6: score = score + slopes[h] * (kv_idx - q_idx)" in text
    assert "fg::TensorRef<float, 1> slopes;" in text


def test_decoding_runs_one_consumer_where_the_plan_says(monkeypatch):
    """The warp-specialised forward's module launches its instances with one consumer
    for calls of at most ForwardPlan.decode_rows query rows (and no dropout or
    exact P); decode_rows = 0 (the plan A/B's off position) and the other families have no
    such instance."""
    import dataclasses
    from flashgen.plan import tiles
    from flashgen.render.kernels import render_module
    spec = flashgen.load("dense")

    def forward(arch):
        return render_module(spec, "flashgen/specs/dense.attn", "bf16", 64, arch=arch)[
            "forward_bf16_d64.cu"]
    one = "kKernel<false, false, kGeneral, 1>"  # (the general and the lean instance)
    text = forward("sm_90a")
    assert one in text and "args.shape.q_len <= kDecodeRows && !args.exact_p" in text
    assert "using DecodeTiles = fg::ForwardTilesSm90Ws<64, 64, 128, 4, 1>;" in text
    assert one not in forward("sm_80")
    planner = tiles._wgmma_ws_forward
    monkeypatch.setattr(tiles, "_wgmma_ws_forward",
                        lambda *a, **k: dataclasses.replace(planner(*a, **k), decode_rows=0))
    assert one not in forward("sm_90a")


def _probe(spec) -> str:
    ns = f"fg_{spec.name}::Variant"
    args = "0, 1, int(threadIdx.x), int(threadIdx.x) / 2, 64, 80"
    body = ["float s = out[threadIdx.x];"]
    if spec.score is not None:
        body.append(f"s = {ns}::score(p, s, {args}) + {ns}::score_grad(p, s, {args});")
    if spec.mask is not None:
        body.append(f"s = {ns}::mask(p, {args}) ? s : 0.f;")
    body.append("out[threadIdx.x] = s;")
    return (f'#include "{spec.name}/variant.cuh"\n'
            f"__global__ void probe_{spec.name}(fg_{spec.name}::Params p, float* out) {{\n  "
            + "\n  ".join(body) + "\n}\n")


@pytest.mark.nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_generated_headers_compile(tmp_path, arch):
    source = tmp_path / "probe.cu"
    source.write_text("".join(_probe(flashgen.load(n)) for n in flashgen.shipped()))
    cmd = ["nvcc", "-std=c++17", f"-arch={arch}", "-c", str(source), "-o", str(tmp_path / "p.o"),
           "-I", str(GENERATED), "-I", str(resources.templates_dir() / "common"),
           "-Werror", "all-warnings", "-Xptxas", "-warn-spills"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _table_reads_ptx(tmp_path, body: str, params: str) -> str:
    """The sm_90a PTX of a kernel over expr.cuh's table reads."""
    source = tmp_path / "reads.cu"
    source.write_text(f'#include "expr.cuh"\n__global__ void reads({params}) {{\n{body}\n}}\n')
    ptx = tmp_path / "reads.ptx"
    result = subprocess.run(["nvcc", "-std=c++17", "-O3", "-arch=sm_90a", "-ptx", str(source),
                             "-o", str(ptx), "-I", str(resources.templates_dir() / "common")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ptx.read_text()


@pytest.mark.nvcc
def test_a_clamped_table_read_compiles_to_min_and_max(tmp_path):
    """TensorRef::at clamps each index with max / min. Written as comparisons, nvcc made
    two branches of every read in a large kernel (the bounds come from the parameter
    space there), and a score reading tables at each element of an unrolled tile gave
    ptxas thousands of basic blocks: fuzz seed 47's forward took it over five minutes
    a kernel, 13 s with max / min. Here the PTX must hold no comparison at all."""
    ptx = _table_reads_ptx(tmp_path, "  int sum = 0;\n#pragma unroll\n"
                           "  for (int i = 0; i < 8; ++i) sum += t.at(b, int(threadIdx.x) + 3 * i);\n"
                           "  out[threadIdx.x] = sum;", "fg::TensorRef<int, 2> t, int* out, int b")
    assert ptx.count("ld.global") == 8
    assert not re.search(r"\b(setp|bra)\b", ptx), "a clamped read compiled to comparisons"


@pytest.mark.nvcc
def test_one_table_element_read_at_every_element_is_loaded_once(tmp_path):
    """A score such as `score * inv_temp[h]` reads the same element at each of a tile's
    elements; the kernels inline it per element, and the compiler must merge the reads.
    Through __ldg (an asm statement) it did not: 64 loads per thread and tile."""
    ptx = _table_reads_ptx(tmp_path, "  float s[16];\n#pragma unroll\n"
                           "  for (int i = 0; i < 16; ++i) s[i] = float(threadIdx.x + i) * t.at(h);\n"
                           "#pragma unroll\n"
                           "  for (int i = 0; i < 16; ++i) out[16 * threadIdx.x + i] = s[i];",
                           "fg::TensorRef<float, 1> t, float* out, int h")
    assert ptx.count("ld.global") == 1


def test_cli_generate_list_check_demo(tmp_path, capsys):
    assert main(["generate", "alibi", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "alibi" / "variant.cuh").is_file()
    capsys.readouterr()
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(flashgen.shipped())
    name, path = lines[0].split("\t")
    assert Path(path).is_file() and name in flashgen.shipped()
    assert main(["list", "--builtins"]) == 0
    assert "def causal()" in capsys.readouterr().out
    assert main(["check", "alibi"]) == 0
    assert capsys.readouterr().out.startswith("ok  alibi")
    assert main(["check", "alibi", "--ir"]) == 0
    assert "mask = q_idx >= kv_idx" in capsys.readouterr().out
    assert main(["demo", "document"]) == 0
    out = capsys.readouterr().out
    assert "namespace fg_document" in out and "the reference on the CPU" in out


def test_resources_are_found():
    assert resources.grammar_path().is_file()
    assert (resources.templates_dir() / "common" / "variant.cuh.j2").is_file()


SPILL_BYTES = 512

# The one instance whose wgmmas ptxas may serialise: three consumers' forward with P V's
# rounding residual (kExactP, for parameter gradients only), whose consumers' 160
# registers hold the previous tile's P twice; with the GEMMs overlapped instead it
# spilled 304 bytes (forward_sm90_ws.cuh kOverlap). Template arguments: V, T, D, Dv, BN,
# Stages, Consumers, kPersistent, QSlots, OStage, kDropout, kExactP, kGeneral.
_SERIAL_ALLOWED = re.compile(
    r"forward_kernel_sm90_ws<[^<>]*<[^<>]*>, [^,]+, \d+, \d+, \d+, \d+, 3, \w+, \d+, \w+, \w+, true, ")


def _ws_forward_args(kernel: str) -> list[str]:
    """The template arguments of a forward_kernel_sm90_ws instance's name, top level only
    (the order in _SERIAL_ALLOWED's comment, then kPagedCall)."""
    body = kernel[kernel.index("forward_kernel_sm90_ws<") + len("forward_kernel_sm90_ws<"):]
    args, depth, start = [], 0, 0
    for i, c in enumerate(body):
        if c == "<":
            depth += 1
        elif c == ">" and depth:
            depth -= 1
        elif c in ",>" and depth == 0:
            args.append(body[start:i].strip())
            start = i + 1
            if c == ">":
                return args
    raise ValueError(kernel)


def _one_consumer(kernel: str) -> bool:
    """The warp-specialised forward's decoding instance (Consumers = 1)."""
    return "forward_kernel_sm90_ws<" in kernel and _ws_forward_args(kernel)[6] == "1"


def _assert_not_serialised(kernel: str, report: dict) -> None:
    assert report["wgmma_serialized"] is None or _SERIAL_ALLOWED.search(kernel), \
        f"{kernel}: ptxas serialised its wgmmas: {report}"


@pytest.mark.nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("name", list(flashgen.shipped()))
def test_every_shipped_kernel_compiles(name, arch):
    """Every (dtype, head dim) of every shipped spec, forward and backward, planned for
    the arch (on sm_90a the forward of d = 64/128/256 and the backward of d = 64/128
    are the wgmma family, elsewhere mma.sync), compiles with the local nvcc (no GPU, no torch headers). Spills stay under SPILL_BYTES: the
    FA2-sized tiles sit at the 255-register limit and ptxas spills up to ~400 bytes in
    some (the dropout forward, score specs' 128-key backward), measured faster than the
    spill-free smaller tiles (templates/kernels/PERF.md); the bound catches a blow-up."""
    from flashgen.build.cache import ptxas_report
    from flashgen.render.kernels import render_module
    from flashgen.render.tile_class import scans_tables
    from flashgen.analysis.derivative import differentiable_loads
    spec = flashgen.load(name)
    path = f"flashgen/specs/{name}.attn"
    sources = {}
    for dtype in spec.dtypes:
        for d in spec.head_dims:
            sources.update(render_module(spec, path, dtype, d, arch=arch))
    report = ptxas_report(sources, arch)
    kernels = {"forward_kernel": 0, "backward_kernel": 0, "dq_convert_kernel": 0, "dq_kernel": 0,
               "delta_kernel": 0, "combine_kernel": 0, "tile_class_kernel": 0}
    for kernel, r in report.items():
        kernels[next(k for k in kernels if k in kernel)] += 1
        assert r["spill_stores"] <= SPILL_BYTES and r["spill_loads"] <= SPILL_BYTES, \
            f"{kernel} spills: {r}"
        _assert_not_serialised(kernel, r)
    units = len(spec.dtypes) * len(spec.head_dims)
    configs = units * (2 if spec.dropout else 1)       # with and without dropout
    # where the score reads float tables, forward and backward come with and without
    # their parameter-gradient code (the forward's: P V with P unrounded); the backward
    # with and without the dQ atomics (one instance runs per call)
    param_grads = 2 if differentiable_loads(spec) else 1
    # on sm_90a the warp-specialised backward comes with the CTA it falls back to
    # (backward_sm90.cuh: a packed batch, tensors TMA cannot address; mma.sync at d = 256)
    from flashgen.plan.tiles import plan_for
    backward_kinds = sum(2 if plan_for(spec, d, arch=arch).backward.producer else 1
                         for d in spec.head_dims) * len(spec.dtypes)
    backward = 2 * (2 if spec.dropout else 1) * param_grads * backward_kinds
    # d = 256's split backward lays dQ's fragments out in its own warp order, converted by
    # its own dq_convert_kernel beside the mma.sync fallback's
    split_units = sum(plan_for(spec, d, arch=arch).backward.split
                      for d in spec.head_dims) * len(spec.dtypes)
    # the warp-specialised forward's one-consumer decoding instances, general and lean
    # (ForwardPlan.decode_rows)
    forwards = [plan_for(spec, d, arch=arch).forward for d in spec.head_dims]
    decode_units = 2 * sum(bool(f.producer and f.decode_rows) for f in forwards) * len(spec.dtypes)
    # and at three consumers a paged call's instance, with the page bands the shared one
    # leaves out (forward_sm90_ws.cuh Tiles::kPagedInstance; not with dropout)
    paged_units = sum(bool(f.producer and f.consumers == 3) for f in forwards) * len(spec.dtypes)
    # the forward also with and without the packed-batch / split-KV work (kGeneral)
    assert kernels == {"forward_kernel": 2 * configs * param_grads + decode_units + paged_units,
                       "backward_kernel": backward,
                       "dq_convert_kernel": units + split_units, "dq_kernel": configs, "delta_kernel": units,
                       "combine_kernel": units,           # split-KV's merge, one per unit
                       "tile_class_kernel": int(scans_tables(spec))}  # one per spec


@pytest.mark.nvcc
@pytest.mark.parametrize("name", ["document", "alibi", "dropout_causal", "bigbird"])
def test_framed_kernels_compile(name):
    """The kernels of shards (op.ring's build module: FramedVariant, common/frame.cuh) of
    specs covering split masks with runtime tile lists, learned tables, dropout and a block
    pattern compile for sm_90a within the spill bound, one (dtype, head dim) each."""
    from flashgen.build.cache import ptxas_report
    from flashgen.render.kernels import render_module
    spec = flashgen.load(name)
    sources = render_module(spec, f"flashgen/specs/{name}.attn", spec.dtypes[0],
                            spec.head_dims[0], framed=True)
    assert all("::FramedVariant;" in text for file, text in sources.items()
               if file.endswith(".cu"))
    report = ptxas_report(sources, "sm_90a")
    assert report
    for kernel, r in report.items():
        assert r["spill_stores"] <= SPILL_BYTES and r["spill_loads"] <= SPILL_BYTES, \
            f"{kernel} spills: {r}"


@pytest.mark.nvcc
@pytest.mark.parametrize("name, d, family", [("causal", 128, "wgmma_ws"),
                                             ("document", 64, "wgmma_ws_persistent"),
                                             ("sliding_window", 64, "wgmma_ws"),
                                             ("alibi", 64, "wgmma_ws")])
def test_warp_specialised_forward_compiles(name, d, family):
    """The warp-specialised sm90 forward (families "wgmma_ws" and "wgmma_ws_persistent",
    forward_sm90_ws.cuh): its producer warpgroup keeps 24 registers and the consumers 240
    where one producer thread loads by TMA (the padded instance), 56 and 224 where all 128
    load with cp.async (the general one), and ptxas allocates each region within its own
    limit, so nothing spills in either. With three consumers (d = 64, not persistent) they
    keep 160 (the producer 24 or 32), and nothing spills either (ALiBi's exact-P instance
    included)."""
    from flashgen.build.cache import ptxas_report
    from flashgen.plan.tiles import TileOverride
    from flashgen.render.kernels import render_module
    spec = flashgen.load(name)
    sources = render_module(spec, f"flashgen/specs/{name}.attn", "bf16", d,
                            TileOverride(family=family), "sm_90a")
    assert "forward_kernel_sm90_ws" in sources[f"forward_bf16_d{d}.cu"]
    sources = {f: t for f, t in sources.items() if not f.startswith("backward")}
    report = {k: r for k, r in ptxas_report(sources, "sm_90a").items() if "forward_kernel" in k}
    assert report
    for kernel, r in report.items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{kernel} spills: {r}"
        _assert_not_serialised(kernel, r)


@pytest.mark.nvcc
@pytest.mark.parametrize("name, d, tile", [("dense", 128, (128, 176)), ("causal", 128, (128, 160)),
                                           ("dense", 256, (128, 80))])
def test_wide_key_tiles_compile(name, d, tile):
    """The warp-specialised forward by hand at FlashAttention-3's wider K/V tiles (a Q K^T
    wgmma of N = 176, 160 or 80: wgmma.cuh), in its leanest shared-memory form where the
    plan must (176 keys at d = 128: two stages, one Q slot, no output stage): it compiles,
    and neither instance spills."""
    from flashgen.build.cache import ptxas_report
    from flashgen.plan.tiles import TileOverride, plan_for
    from flashgen.render.kernels import render_module
    spec = flashgen.load(name)
    tiles = TileOverride(forward=tile, family="wgmma_ws_persistent" if d <= 128 else "wgmma_ws")
    plan = plan_for(spec, d, tiles, "sm_90a").forward
    assert (plan.block_m, plan.block_n, plan.producer) == (*tile, True)
    sources = render_module(spec, f"flashgen/specs/{name}.attn", "bf16", d, tiles, "sm_90a")
    sources = {f: t for f, t in sources.items() if not f.startswith("backward")}
    report = {k: r for k, r in ptxas_report(sources, "sm_90a").items() if "forward_kernel" in k}
    assert report
    for kernel, r in report.items():
        if d == 256 and _ws_forward_args(kernel)[12] == "true":
            continue  # the general instance (kGeneral; varlen, paged): 224 registers spill at 80 keys
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{kernel} spills: {r}"


@pytest.mark.nvcc
@pytest.mark.parametrize("spec_name", ["dense", "sliding_window"])
@pytest.mark.parametrize("mode", ["grid", "persistent", "decode"])
def test_timeline_patch_compiles(mode, spec_name):
    """tests/gpu/timeline.py's stamps still find their places in the warp-specialised
    forward (the grid's kernel, the persistent one with the copy's launch.py, and with
    --decode the general instance's producer and consumer, the decoding instance's
    spills checked) and the
    patched kernel compiles spilling no more than the kernel it measures: the tool that
    split the forward's fixed cost per unit (PERF.md, issue 8's seventeenth and
    twenty-first steps) does not rot, nor perturb what it measures (a stamp index kept
    live in the producer had doubled the sliding window's producer spills)."""
    from flashgen.build.cache import ptxas_report
    from flashgen.render.kernels import render_module
    from tests.gpu.timeline import (DECODE_EDITS, EDITS, KERNEL, LAUNCH, LAUNCH_DECODE_EDITS,
                                    LAUNCH_EDITS, PERSISTENT_EDITS, PRODUCER_EDITS, STORE_EDITS,
                                    patch)
    persistent = mode == "persistent"
    spec = flashgen.load(spec_name)
    sources = render_module(spec, f"flashgen/specs/{spec_name}.attn", "bf16", 128, arch="sm_90a")
    header = KERNEL.removeprefix("templates/")
    sources = {f: t for f, t in sources.items() if not f.startswith("backward")}
    edits = {"grid": EDITS, "persistent": PERSISTENT_EDITS, "decode": DECODE_EDITS}[mode]
    patched = {**sources, header: patch(sources[header], edits)}
    if mode != "grid":
        launch_edits = LAUNCH_EDITS if persistent else LAUNCH_DECODE_EDITS
        assert "LAST_TICKETS" in patch((ROOT / LAUNCH).read_text(), launch_edits, LAUNCH)
    assert "fg_now()" in patched[header]

    def spills(sources):
        report = {k: r for k, r in ptxas_report(sources, "sm_90a").items() if "forward_kernel" in k}
        assert report
        return {k: (r["spill_stores"], r["spill_loads"]) for k, r in report.items()}
    before, after = spills(sources), spills(patched)
    assert before.keys() == after.keys()
    assert mode != "decode" or any(_one_consumer(k) for k in after)
    for kernel, (stores, loads) in after.items():
        if mode == "decode" and not _one_consumer(kernel):
            continue  # the producer's stamps are in every instance; one consumer's measured
        assert stores <= before[kernel][0] and loads <= before[kernel][1], \
            f"{kernel} spills {stores} / {loads} bytes with the stamps, {before[kernel]} without"
    if persistent:  # --producer's stamps: they perturb the producer (timeline.py), compile
        with_producer = {**sources, header: patch(sources[header],
                                                  PERSISTENT_EDITS + PRODUCER_EDITS)}
        for kernel, (stores, loads) in spills(with_producer).items():
            assert stores <= SPILL_BYTES and loads <= SPILL_BYTES, f"{kernel}: {stores} / {loads}"
        # --store's: the O store's clock() reads, in the consumers
        with_store = {**sources, header: patch(sources[header], PERSISTENT_EDITS + STORE_EDITS)}
        for kernel, (stores, loads) in spills(with_store).items():
            assert stores <= before[kernel][0] and loads <= before[kernel][1], \
                f"{kernel} spills {stores} / {loads} bytes with --store, {before[kernel]} without"


def _tiles_types(plan) -> tuple[str, str]:
    """The C++ tile structs (kernels/*.cuh) of a plan's forward and backward, as the
    units name them (templates/kernels/*.cu.j2)."""
    f, b, d, dv = plan.forward, plan.backward, plan.head_dim, plan.value_dim
    if f.producer:
        fwd = (f"fg::ForwardTilesSm90Ws<{d}, {dv}, {f.block_n}, {f.kv_stages}, {f.consumers}"
               + (f", true, {f.q_slots}, {str(f.o_stage).lower()}>" if f.persistent else ">"))
    elif f.family == "wgmma":
        fwd = f"fg::ForwardTilesSm90<{d}, {dv}, {f.block_m}, {f.block_n}>"
    else:
        fwd = f"fg::ForwardTiles<{d}, {dv}, {f.block_m}, {f.block_n}, {f.warps}>"
    if b.split:
        bwd = f"fg::BackwardTilesSm90Split<{d}, {dv}, {b.stages}>"
    elif b.producer:
        bwd = f"fg::BackwardTilesSm90Ws<{d}, {dv}, {b.block_m}, {b.block_n}, {b.stages}>"
    elif b.family == "wgmma":
        bwd = f"fg::BackwardTilesSm90<{d}, {dv}, {b.block_m}, {b.block_n}>"
    else:
        bwd = f"fg::BackwardTiles<{d}, {dv}, {b.block_m}, {b.block_n}, {b.warps}, {b.stages}>"
    return fwd, bwd


@pytest.mark.nvcc
def test_planned_shared_memory_is_the_kernels(tmp_path):
    """The planner's shared-memory model (ForwardPlan / BackwardPlan.smem_bytes, which
    picks tiles and stages against the arch's limit and which `flashgen explain` prints)
    is what the kernels ask for at launch (Tiles::smem_bytes), for every shipped spec's
    plans on sm_80 and sm_90a: static_asserts over the tile structs alone, no kernel
    instantiated."""
    from flashgen.plan.tiles import TileOverride, plan_for
    checks = set()
    for name in flashgen.shipped():
        spec = flashgen.load(name)
        for d in spec.head_dims:
            for arch in ("sm_80", "sm_90a"):
                plan = plan_for(spec, d, arch=arch)
                fwd, bwd = _tiles_types(plan)
                checks.add((fwd, plan.forward.smem_bytes(plan.head_dim, plan.value_dim)))
                checks.add((bwd, plan.backward.smem_bytes(plan.head_dim, plan.value_dim)))
    # the persistent forward's Q slots (two, or one at d = 256) and output stages (d = 128)
    for d in (64, 128, 256):
        plan = plan_for(flashgen.load("causal"), d, TileOverride(family="wgmma_ws_persistent"),
                        "sm_90a")
        checks.add((_tiles_types(plan)[0], plan.forward.smem_bytes(d, d)))
    source = tmp_path / "smem.cu"
    source.write_text(
        '#include "kernels/forward_sm90.cuh"\n#include "kernels/forward_sm90_ws.cuh"\n'
        '#include "kernels/backward_sm90_split.cuh"\n'
        + "".join(f'static_assert({t}::smem_bytes<__nv_bfloat16>() == {n}, "{t}: planned {n}");\n'
                  for t, n in sorted(checks)))
    templates = resources.templates_dir()
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90a", "-c", str(source), "-o", str(tmp_path / "s.o"),
           "-I", str(templates), "-I", str(templates / "common")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(checks) > 10
