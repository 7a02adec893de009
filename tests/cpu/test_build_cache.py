"""The build cache: keys, the cache directory, building and loading a library without a GPU,
one build when eight processes ask at once, and the ptxas resource report."""
import io
import multiprocessing
import re
import time
from pathlib import Path

import pytest
import torch

from flashgen.build import cache
from flashgen.build.cache import BuildError, build, cache_dir, module_key, ptxas_report
from flashgen.progress import Ticker

TINY = {
    "answer.cu": '#include "answer.cuh"\n'
                 'extern "C" int fg_answer() { return FG_ANSWER; }\n'
                 "__global__ void fg_fill(int* out) { out[threadIdx.x] = FG_ANSWER; }\n",
    "answer.cuh": "#define FG_ANSWER 42\n",
}


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHGEN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_module_key_is_stable_and_sees_sources_flags_arch_and_nvcc(monkeypatch):
    key = module_key(TINY, "sm_80", ["-lineinfo"])
    assert len(key) == 16 and int(key, 16) >= 0
    assert module_key(dict(reversed(TINY.items())), "sm_80", ("-lineinfo",)) == key
    changed = [
        module_key({**TINY, "answer.cuh": "#define FG_ANSWER 43\n"}, "sm_80", ["-lineinfo"]),
        module_key({**TINY, "extra.cuh": ""}, "sm_80", ["-lineinfo"]),
        module_key(TINY, "sm_80", []),
        module_key(TINY, "sm_90a", ["-lineinfo"]),
    ]
    monkeypatch.setattr(cache, "_nvcc_version", lambda nvcc: "another nvcc")
    changed.append(module_key(TINY, "sm_80", ["-lineinfo"]))
    assert len({key, *changed}) == len(changed) + 1


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("FLASHGEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "flashgen"
    monkeypatch.setenv("FLASHGEN_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FLASHGEN_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "flashgen"


def test_arch_flags_and_device_arch(monkeypatch):
    assert cache._arch_flags("sm_80") == ["-gencode=arch=compute_80,code=sm_80"]
    assert cache._arch_flags("sm_90a") == ["-gencode=arch=compute_90a,code=sm_90a"]
    with pytest.raises(ValueError, match="sm_80"):
        cache._arch_flags("compute_80")
    # The caller's -O and -std win; nvcc would warn about a redefined option.
    assert "-O3" not in cache._nvcc_flags("sm_80", ["-O2"])
    assert "-std=c++17" not in cache._nvcc_flags("sm_80", ["-std=c++20"])
    for capability, arch in [((9, 0), "sm_90a"), ((8, 6), "sm_86"), ((10, 0), "sm_100")]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None, c=capability: c)
        assert cache.device_arch() == arch


def test_bad_names_are_refused_before_building(tmp_cache):
    with pytest.raises(ValueError, match="C identifier"):
        build(TINY, name="not-an-identifier", arch="sm_80")
    with pytest.raises(ValueError, match="relative paths"):
        build({**TINY, "../escape.cuh": ""}, name="tiny", arch="sm_80")
    with pytest.raises(ValueError, match=r"no \.cu"):
        build({"answer.cuh": ""}, name="tiny", arch="sm_80")
    assert not tmp_cache.exists()


PTXAS_OUTPUT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z5scaleILi256EEvPff' for 'sm_90a'
ptxas info    : Function properties for _Z5scaleILi256EEvPff
    256 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 256 bytes cumulative stack size, 1024 bytes smem
ptxas info    : Compile time = 24.200 ms
ptxas info    : Function properties for _Z6helperf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Function properties for plain
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'plain' for 'sm_80'
ptxas info    : Used 8 registers, 360 bytes cmem[0]
ptxas info    : (C7512) Potential Performance Loss: wgmma.mma_async instructions are serialized due to insufficient register resources for the function '_Z5scaleILi256EEvPff'
"""


def test_parse_ptxas_output():
    kernels = cache._parse_ptxas(PTXAS_OUTPUT)
    assert set(kernels) == {"_Z5scaleILi256EEvPff", "plain"}      # not the device function
    assert kernels["_Z5scaleILi256EEvPff"] == {
        "registers": 40, "spill_stores": 8, "spill_loads": 12, "smem_static": 1024,
        "stack": 256, "barriers": 1, "cubin_seconds": pytest.approx(0.0242),
        "wgmma_serialized": "C7512"}                              # ptxas's warning, named
    # Properties printed before the entry line (older nvcc) still land on the kernel.
    assert kernels["plain"] == {"registers": 8, "spill_stores": 0, "spill_loads": 0,
                                "smem_static": 0, "stack": 0, "barriers": 0,
                                "wgmma_serialized": None}


@pytest.mark.nvcc
def test_build_loads_and_calls_then_comes_from_the_cache(tmp_cache):
    built = build(TINY, name="tiny", arch="sm_80")
    assert not built.cached and built.seconds > 0
    assert built.path == tmp_cache / f"tiny_{built.key}" / f"tiny_{built.key}.so"
    assert built.key == module_key(TINY, "sm_80", [])
    # nvcc links the CUDA runtime statically, so loading needs no GPU and no libcudart.so.
    assert built.library().fg_answer() == 42
    assert built.library() is built.library()

    start = time.perf_counter()
    again = build(TINY, name="tiny", arch="sm_80")
    assert time.perf_counter() - start < 1.0
    assert again.cached and again.seconds == 0.0 and again.path == built.path
    assert again.library().fg_answer() == 42
    # Nothing but the module and its lock is left behind.
    assert sorted(p.name for p in tmp_cache.iterdir()) == [f"tiny_{built.key}",
                                                           f"tiny_{built.key}.lock"]


@pytest.mark.nvcc
def test_a_failed_build_raises_with_the_compiler_output_and_leaves_nothing(tmp_cache):
    broken = {"broken.cu": 'extern "C" int fg_broken() { return undeclared_thing; }\n'}
    with pytest.raises(BuildError, match="undeclared_thing") as error:
        build(broken, name="broken", arch="sm_80")
    assert "building broken_" in str(error.value) and "undeclared_thing" in error.value.output
    assert [p.suffix for p in tmp_cache.iterdir()] == [".lock"]


@pytest.mark.nvcc
def test_a_corrupted_cached_library_fails_its_check_and_is_rebuilt(tmp_cache):
    built = build(TINY, name="tiny", arch="sm_80")
    digest = built.path.with_suffix(".sha256")
    assert digest.read_text() == cache._digest(built.path)
    built.path.write_bytes(built.path.read_bytes()[:4096])      # truncated on disk
    cache._VERIFIED.discard(built.path)                          # as a new process sees it
    again = build(TINY, name="tiny", arch="sm_80")
    assert not again.cached and again.path == built.path
    assert digest.read_text() == cache._digest(again.path)
    digest.unlink()                                              # a build killed before it
    cache._VERIFIED.discard(built.path)
    assert not build(TINY, name="tiny", arch="sm_80").cached


def test_an_unwritable_cache_directory_names_the_fix(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("FLASHGEN_CACHE_DIR", str(tmp_path / "a_file" / "cache"))
    with pytest.raises(BuildError, match="cannot write the kernel cache .*set FLASHGEN_CACHE_DIR"):
        build(TINY, name="tiny", arch="sm_80")


def _build_in_child(barrier, results):
    barrier.wait()                                  # both ask at the same moment
    built = build(TINY, name="race", arch="sm_80")
    results.put((built.cached, built.library().fg_answer()))


@pytest.mark.nvcc
def test_eight_processes_asking_at_once_build_once(tmp_cache):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(8), context.Queue()
    children = [context.Process(target=_build_in_child, args=(barrier, results))
                for _ in range(8)]
    for child in children:
        child.start()
    outcomes = sorted(results.get(timeout=300) for _ in children)
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    # One built it; the others waited on the lock and found it built, and all loaded it.
    assert outcomes == [(False, 42)] + [(True, 42)] * 7
    names = sorted(p.name for p in tmp_cache.iterdir())
    assert len(names) == 2 and names[0].startswith("race_") and names[1].endswith(".lock")


@pytest.mark.nvcc
def test_ptxas_report_counts_registers_per_kernel():
    sources = {
        "a.cu": "template <int N> __global__ void scale(float* p) {\n"
                "  __shared__ float tile[N];\n"
                "  tile[threadIdx.x % N] = p[threadIdx.x];\n"
                "  __syncthreads();\n"
                "  p[threadIdx.x] = tile[(threadIdx.x + 1) % N] * 2.f;\n"
                "}\n"
                "template __global__ void scale<64>(float*);\n",
        "b.cu": TINY["answer.cu"],
        "answer.cuh": TINY["answer.cuh"],
    }
    report = ptxas_report(sources, "sm_80")
    by_mangled = {info["mangled"]: info for info in report.values()}
    assert set(by_mangled) == {"_Z5scaleILi64EEvPf", "_Z7fg_fillPi"}
    scale = by_mangled["_Z5scaleILi64EEvPf"]
    assert scale["registers"] > 0 and scale["smem_static"] == 64 * 4 and scale["barriers"] == 1
    assert scale["file"] == "a.cu" and by_mangled["_Z7fg_fillPi"]["file"] == "b.cu"
    if cache._demangle(["_Z7fg_fillPi"]) != {"_Z7fg_fillPi": "_Z7fg_fillPi"}:
        assert "void scale<64>(float*)" in report


@pytest.mark.nvcc
def test_ptxas_report_raises_build_error():
    with pytest.raises(BuildError, match="nvcc failed on bad.cu for sm_80") as error:
        ptxas_report({"bad.cu": "__global__ void k() { nope(); }\n"}, "sm_80")
    assert "nope" in error.value.output and error.value.command[0].endswith("nvcc")


def test_missing_nvcc_is_a_readable_build_error(tmp_cache, monkeypatch):
    monkeypatch.setattr(cache, "nvcc_path", lambda: None)
    with pytest.raises(BuildError, match="nvcc not found"):
        build(TINY, name="tiny", arch="sm_80")
    assert [p.suffix for p in tmp_cache.iterdir()] == [".lock"]
    assert not any(Path(tmp_cache).glob(".tiny_*"))


def _slow_nvcc(tmp_path: Path, build_step: str) -> Path:
    """A stand-in nvcc: `--version` answers as the real one (the module key asks), and a
    compile runs the shell `build_step` instead ($REAL: the real nvcc)."""
    import shutil
    slow = tmp_path / "slow_nvcc"
    slow.write_text(f'#!/bin/sh\nREAL={shutil.which("nvcc")}\n'
                    'if [ "$1" = "--version" ]; then exec "$REAL" --version; fi\n'
                    f"{build_step}\n")
    slow.chmod(0o755)
    return slow


_KILLED_CHILD = """
import sys
from flashgen.build import cache
cache.nvcc_path = lambda: sys.argv[1]
cache.build(cache_sources, name="tiny", arch="sm_80")
"""


@pytest.mark.nvcc
def test_a_build_killed_halfway_leaves_nothing_a_later_load_takes_for_a_module(tmp_cache, tmp_path):
    """SIGKILL a process (and its nvcc) in the middle of compiling: no module appears, the
    lock dies with it, and the next build cleans the leftovers and builds afresh."""
    import os
    import signal
    import subprocess
    import sys
    started = tmp_path / "nvcc_started"
    slow = _slow_nvcc(tmp_path, f'touch {started}\nsleep 60\nexec "$REAL" "$@"')
    code = f"cache_sources = {TINY!r}\n" + _KILLED_CHILD
    child = subprocess.Popen([sys.executable, "-c", code, str(slow)], start_new_session=True,
                             env={**os.environ, "FLASHGEN_CACHE_DIR": str(tmp_cache)})
    deadline = time.time() + 120
    while not started.exists():
        assert child.poll() is None and time.time() < deadline, "the child's build never started"
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)         # python, ninja and the compiler at once
    child.wait()
    leftovers = [p.name for p in tmp_cache.iterdir() if p.name.startswith(".tiny_")]
    assert leftovers, "the killed build should have left its temporary directory"
    key = module_key(TINY, "sm_80", [])
    assert not (tmp_cache / f"tiny_{key}").exists()
    built = build(TINY, name="tiny", arch="sm_80")  # the lock was released by the kill
    assert not built.cached and built.library().fg_answer() == 42
    assert sorted(p.name for p in tmp_cache.iterdir()) == [f"tiny_{key}", f"tiny_{key}.lock"]


@pytest.mark.nvcc
def test_a_build_shows_one_line_with_its_time_and_a_cache_hit_shows_nothing(tmp_cache, capsys,
                                                                            monkeypatch):
    monkeypatch.delenv("FLASHGEN_QUIET", raising=False)
    build(TINY, name="answer", arch="sm_80", label="answer fwd+bwd (bf16, d64)")
    err = capsys.readouterr().err.splitlines()
    # off a terminal: the line at the start, and again with the time at the end
    assert err[0] == "flashgen: compiling answer fwd+bwd (bf16, d64) for sm_80 ..."
    assert re.fullmatch(r"flashgen: compiling answer fwd\+bwd \(bf16, d64\) for sm_80 \.\.\. "
                        r"\d+\.\d s", err[1]) and len(err) == 2
    build(TINY, name="answer", arch="sm_80", label="answer fwd+bwd (bf16, d64)")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("FLASHGEN_QUIET", "1")
    cache.clear()
    build(TINY, name="answer", arch="sm_80", label="answer fwd+bwd (bf16, d64)")
    assert capsys.readouterr().err == ""


def test_ticker_counts_in_place_on_a_terminal_and_shares_the_line():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    out = Terminal()
    with Ticker("compiling a", stream=out, every=0.01):
        with Ticker("compiling b", stream=out, every=0.01):
            time.sleep(0.1)
    text = out.getvalue()
    assert "\rcompiling a ... " in text and "(+1 more)" in text
    assert "\rcompiling b ... " not in text.split("compiling b ...")[0]   # a counts, b waits
    lines = text.split("\n")
    assert re.search(r"compiling b \.\.\. \d+\.\d s\x1b\[K$", lines[0])
    assert re.search(r"compiling a \.\.\. \d+\.\d s\x1b\[K$", lines[1])


def _fake_module(root: Path, name: str, key: str, intact=True) -> Path:
    directory = root / f"{name}_{key}"
    directory.mkdir(parents=True)
    library = directory / f"{name}_{key}.so"
    library.write_bytes(b"\x7fELF" + name.encode())
    library.with_suffix(".sha256").write_text(cache._digest(library) if intact else "0" * 64)
    return directory


def test_cache_list_and_clear(tmp_cache, capsys):
    from flashgen.cli import main
    _fake_module(tmp_cache, "alibi_bf16_d128", "0123456789abcdef")
    _fake_module(tmp_cache, "causal_fp16_d64", "fedcba9876543210", intact=False)
    (tmp_cache / ".causal_fp16_d64_fedcba9876543210.x1").mkdir()   # a killed build's leftover
    (tmp_cache / ".causal_bf16_d64_00000000000000aa.x2").mkdir()    # ... of a module never built
    (tmp_cache / "causal_fp16_d64_fedcba9876543210.lock").touch()
    assert [(m.name, m.key, m.intact) for m in cache.cached_modules()] == [
        ("alibi_bf16_d128", "0123456789abcdef", True),
        ("causal_fp16_d64", "fedcba9876543210", False)]
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_cache}: 2 module(s)" in out and "alibi_bf16_d128" in out
    assert "corrupt (rebuilt on next use)" in out.splitlines()[2]
    assert main(["cache", "clear", "causal_*"]) == 0
    assert "removed 1 module(s)" in capsys.readouterr().out
    assert [m.name for m in cache.cached_modules()] == ["alibi_bf16_d128"]
    assert not list(tmp_cache.glob(".causal*"))
    assert all(p.suffix == ".lock" for p in tmp_cache.glob("causal*"))  # locks stay (cache.clear)
    # a module another process is building is kept
    from filelock import FileLock
    with FileLock(str(tmp_cache / "alibi_bf16_d128_0123456789abcdef.lock")):
        removed, skipped = cache.clear()
        assert removed == [] and skipped == ["alibi_bf16_d128"]
    removed, _ = cache.clear()
    assert [m.name for m in removed] == ["alibi_bf16_d128"] and cache.cached_modules() == []


@pytest.mark.nvcc
def test_quiet_blocks_silence_build_lines_in_every_thread(tmp_cache, capsys, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    monkeypatch.delenv("FLASHGEN_QUIET", raising=False)
    with cache.quiet(), ThreadPoolExecutor(2) as pool:
        pool.submit(build, TINY, name="answer", arch="sm_80", label="answer").result()
    assert capsys.readouterr().err == ""


@pytest.mark.nvcc
def test_a_build_past_its_time_limit_is_stopped_with_its_compiler(tmp_cache, tmp_path, monkeypatch):
    """FLASHGEN_BUILD_TIMEOUT stops a runaway compile: BuildError names the limit, the
    compiler is killed with ninja (not left running), nothing is cached, and the same
    build without the limit then succeeds."""
    pid_file = tmp_path / "slow_nvcc.pid"
    slow = _slow_nvcc(tmp_path, f"echo $$ > {pid_file}\nexec sleep 300")
    monkeypatch.setattr(cache, "nvcc_path", lambda: str(slow))
    monkeypatch.setenv("FLASHGEN_BUILD_TIMEOUT", "2")
    start = time.perf_counter()
    with pytest.raises(BuildError, match=r"took longer than FLASHGEN_BUILD_TIMEOUT \(2 s\)"):
        build(TINY, name="tiny", arch="sm_80")
    assert time.perf_counter() - start < 30
    sleeper = int(pid_file.read_text())
    deadline = time.time() + 10
    while Path(f"/proc/{sleeper}").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{sleeper}").exists(), "the compiler outlived its stopped build"
    assert [p.suffix for p in tmp_cache.iterdir()] == [".lock"]   # no module, no leftovers

    monkeypatch.undo()
    monkeypatch.setenv("FLASHGEN_CACHE_DIR", str(tmp_cache))
    monkeypatch.setenv("FLASHGEN_BUILD_TIMEOUT", "not a number")
    with pytest.raises(BuildError, match="must be a number of seconds"):
        build(TINY, name="tiny", arch="sm_80")
    monkeypatch.setenv("FLASHGEN_BUILD_TIMEOUT", "0")
    assert build(TINY, name="tiny", arch="sm_80").library().fg_answer() == 42
