"""Build rendered CUDA sources into a shared library once per user, and load it with ctypes.

A module lives in cache_dir()/<name>_<key>/<name>_<key>.so, where the key hashes everything
that changes the machine code: the sources, the flags, the target arch, nvcc, torch and
BUILD_FORMAT. A lock per module keeps concurrent processes from building it twice, and a
module appears by renaming its finished build directory, so no reader sees half a library.
Beside the library lies the SHA-256 of its bytes: a library changed on disk afterwards
(truncated, overwritten) fails the check on load and is rebuilt.

Why not torch.utils.cpp_extension.load: it cannot build this on a machine without a GPU.
On a CPU-only torch its CUDA_HOME is None whatever the environment says, so include_paths
("cuda") raises; it links -lc10_cuda -ltorch_cuda -ltorch_python, which such a torch does
not ship and which our ctypes libraries do not need; it adds COMMON_NVCC_FLAGS, which
switch off the __half/__nv_bfloat16 operators and conversions; and it dlopens the result
through torch.ops.load_library. So we write the ninja file ourselves, with the same nvcc
command on every machine (and in ptxas_report), and take only CUDA_HOME (where to find nvcc)
from cpp_extension.

The key sees only what is passed in: put every header a kernel includes into `sources`
(names may have directories, "kernels/forward.cuh"); a header reached through an -I in
`flags` is not hashed, and editing it would not rebuild.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import fnmatch
import ctypes
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from torch.utils import cpp_extension

from ..progress import Ticker

# Bump when the build changes in a way the key does not see (default flags, link step, layout).
BUILD_FORMAT = 2   # 2: modules carry the SHA-256 of their library

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Relative paths in characters that need no quoting in a ninja file or a shell.
_SOURCE_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_ARCH = re.compile(r"sm_(\d+[af]?)")


class BuildError(RuntimeError):
    """nvcc (or ninja) failed; `output` holds everything the compiler printed."""

    def __init__(self, summary: str, output: str = "", command: list[str] | None = None):
        self.summary = summary
        self.output = output
        self.command = command
        # The first errors are the useful ones; the rest is in .output.
        lines = output.strip().splitlines()
        if len(lines) > 40:
            lines = [*lines[:40], f"... ({len(lines) - 40} more lines in .output)"]
        excerpt = "\n".join(lines)
        super().__init__(f"{summary}\n{excerpt}" if excerpt else summary)


@dataclass(frozen=True)
class BuiltModule:
    path: Path       # the .so
    key: str
    seconds: float   # build wall time; 0.0 when it came from the cache
    cached: bool

    def library(self) -> ctypes.CDLL:
        """The loaded library, one CDLL per path and process."""
        with _LIBRARIES_LOCK:
            if self.path not in _LIBRARIES:
                _LIBRARIES[self.path] = ctypes.CDLL(str(self.path))
            return _LIBRARIES[self.path]


_LIBRARIES: dict[Path, ctypes.CDLL] = {}
_LIBRARIES_LOCK = threading.Lock()


def cache_dir() -> Path:
    """$FLASHGEN_CACHE_DIR, else $XDG_CACHE_HOME/flashgen, else ~/.cache/flashgen."""
    if os.environ.get("FLASHGEN_CACHE_DIR"):
        return Path(os.environ["FLASHGEN_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "flashgen"
    return Path.home() / ".cache" / "flashgen"


def nvcc_path() -> str | None:
    """nvcc under torch's CUDA_HOME, else the one on PATH, else None."""
    if cpp_extension.CUDA_HOME:
        candidate = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nvcc")


@functools.cache
def _nvcc_version(nvcc: str | None) -> str:
    if nvcc is None:
        return ""
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout


def module_key(sources: dict[str, str], arch: str, flags: list[str]) -> str:
    """16 hex digits of a sha256 over everything that changes the built library."""
    nvcc = nvcc_path()
    material = {
        "format": BUILD_FORMAT,
        "sources": sorted(sources.items()),
        "arch": arch,
        "flags": list(flags),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "nvcc": _nvcc_version(nvcc),
    }
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:16]


def device_arch(device_index=None) -> str:
    """The arch to build for a device: sm_90a on compute capability 9.0 (so the kernels may
    use wgmma and setmaxnreg), else sm_<major><minor>."""
    major, minor = torch.cuda.get_device_capability(device_index)
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


def _arch_flags(arch: str) -> list[str]:
    match = _ARCH.fullmatch(arch)
    if match is None:
        raise ValueError(f"arch must look like 'sm_80' or 'sm_90a', not {arch!r}")
    number = match.group(1)
    return [f"-gencode=arch=compute_{number},code=sm_{number}"]


def _nvcc_flags(arch: str, flags) -> list[str]:
    """The flags of every compile, build or report alike. Defaults are left out where the
    caller sets them, since nvcc warns about a redefined option (an error under -Werror)."""
    flags = list(flags)
    defaults = [default for default, option in (("-O3", "-O"), ("-std=c++17", "-std"))
                if not any(flag.startswith(option) for flag in flags)]
    # -I. : headers passed in `sources` lie beside the .cu files, in the working directory.
    return [*_arch_flags(arch), *defaults, "-Xcompiler", "-fPIC", "-I.", *flags]


def _require_nvcc() -> str:
    nvcc = nvcc_path()
    if nvcc is None:
        raise BuildError("nvcc not found: put it on PATH, "
                         "or set CUDA_HOME with a CUDA build of torch")
    return nvcc


def _check_sources(sources: dict[str, str]) -> list[str]:
    """The .cu files among `sources`, after checking that every name stays inside the
    build directory."""
    for file_name in sources:
        if not _SOURCE_NAME.fullmatch(file_name) or {".", ".."} & set(file_name.split("/")):
            raise ValueError("source names are relative paths of [A-Za-z0-9_.-], "
                             f"not {file_name!r}")
    cu_files = sorted(file_name for file_name in sources if file_name.endswith(".cu"))
    if not cu_files:
        raise ValueError("sources contain no .cu file to compile")
    return cu_files


def _write_sources(sources: dict[str, str], directory: Path):
    for file_name, text in sources.items():
        path = directory / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def build(sources: dict[str, str], *, name: str, arch: str, flags: list[str] = (),
          verbose=False, label: str | None = None) -> BuiltModule:
    """The shared library of `sources` for `arch`, from the cache or built now.

    sources: file name -> text; .cu files are compiled, the others are headers beside them.
    name: a readable prefix of the module name (a C identifier). label: what a build
    shows on stderr while it compiles (`compiling alibi fwd+bwd (bf16, d128) for sm_90a
    ... 12.4 s`); silent on a cache hit, without a label, or with FLASHGEN_QUIET=1."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"name must be a C identifier, not {name!r}")
    cu_files = _check_sources(sources)
    key = module_key(sources, arch, flags)
    stem = f"{name}_{key}"
    root = cache_dir()
    final = root / stem / f"{stem}.so"
    if _intact(final):
        return BuiltModule(final, key, 0.0, True)
    show = (label is not None and not verbose and not _QUIET
            and os.environ.get("FLASHGEN_QUIET") != "1")
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f"{stem}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:          # another process is building it: say so, then wait
            with _line(show, f"flashgen: waiting for another process compiling {label}"):
                lock.acquire()
    except OSError as error:
        raise BuildError(f"cannot write the kernel cache {root} ({error.strerror or error}): "
                         "set FLASHGEN_CACHE_DIR to a writable directory") from None
    try:
        # Another process may have built it while we waited for the lock.
        if _intact(final):
            return BuiltModule(final, key, 0.0, True)
        # We hold the lock, so temporary directories of this module are left by a build
        # that was killed; nobody else uses them.
        for leftover in root.glob(f".{stem}.*"):
            shutil.rmtree(leftover, ignore_errors=True)
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=root))
        try:
            _write_sources(sources, tmp)
            _write_ninja_file(tmp, stem, cu_files, _nvcc_flags(arch, flags))
            with _line(show, f"flashgen: compiling {label} for {arch}"):
                _run_ninja(tmp, stem, verbose)
            library = tmp / f"{stem}.so"
            library.with_suffix(".sha256").write_text(_digest(library))
            # A module directory whose library is missing or fails its check is stale;
            # the rename below needs the name free.
            shutil.rmtree(final.parent, ignore_errors=True)
            os.rename(tmp, final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return BuiltModule(final, key, time.perf_counter() - start, False)
    finally:
        lock.release()


@dataclass(frozen=True)
class CachedModule:
    """One module of the cache, as `flashgen cache list` shows it."""
    name: str        # the readable part: spec, dtype, head dim (and tile override)
    key: str         # the content hash (module_key)
    path: Path       # the module's directory
    bytes: int       # everything in the directory
    modified: float  # the library's mtime
    intact: bool     # the library matches its SHA-256 (else the next load rebuilds it)


def cached_modules(root: Path | None = None) -> list[CachedModule]:
    """The modules in the cache directory, by name."""
    root = root or cache_dir()
    if not root.is_dir():
        return []
    found = []
    for directory in sorted(root.iterdir()):
        library = directory / f"{directory.name}.so"
        if directory.name.startswith(".") or not library.is_file():
            continue
        name, _, key = directory.name.rpartition("_")
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        found.append(CachedModule(name, key, directory, size, library.stat().st_mtime,
                                  _digest_matches(library)))
    return found


def clear(pattern: str = "*", root: Path | None = None) -> tuple[list[CachedModule], list[str]]:
    """Remove the cached modules whose name matches the glob `pattern`, and the leftovers of
    killed builds (of any module so named, built or not). A module another process is
    building right now (its lock is held) is skipped. Lock files stay: deleting one that a
    later build has just opened would let a third process take a fresh lock of the same
    name and build the module at the same time. Returns (removed, skipped names)."""
    root = root or cache_dir()
    removed, skipped = [], []
    if not root.is_dir():
        return removed, skipped
    modules = {m.path.name: m for m in cached_modules(root)}
    # Leftovers are named ".{stem}.{random}"; a stem is "{name}_{key}".
    stems = set(modules) | {p.name[1:].rsplit(".", 1)[0] for p in root.glob(".*.*")
                            if p.is_dir()}
    for stem in sorted(stems):
        name = stem.rpartition("_")[0]
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        lock = FileLock(str(root / f"{stem}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            skipped.append(name)
            continue
        try:
            for leftover in root.glob(f".{stem}.*"):
                shutil.rmtree(leftover, ignore_errors=True)
            if stem in modules:
                shutil.rmtree(modules[stem].path, ignore_errors=True)
                _VERIFIED.discard(modules[stem].path / f"{stem}.so")
                removed.append(modules[stem])
        finally:
            lock.release()
    return removed, skipped


_QUIET: list[bool] = []     # quiet() blocks open now, in any thread


@contextlib.contextmanager
def quiet():
    """No build lines while the block runs, in any thread: for callers that show their own
    progress over many builds (the benchmark, the fuzzer)."""
    _QUIET.append(True)
    try:
        yield
    finally:
        _QUIET.pop()


def _line(show: bool, text: str):
    return Ticker(text) if show else contextlib.nullcontext()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(library: Path) -> bool:
    """Is the cached library there, with the bytes it was built with? Checked once per
    path and process (a few ms for a module's library)."""
    if library in _VERIFIED:
        return True
    ok = _digest_matches(library)
    if ok:
        _VERIFIED.add(library)
    return ok


def _digest_matches(library: Path) -> bool:
    try:
        return library.with_suffix(".sha256").read_text().strip() == _digest(library)
    except OSError:        # no library, or no digest (a build killed before writing it)
        return False


_VERIFIED: set[Path] = set()


def _write_ninja_file(directory: Path, stem: str, cu_files: list[str], nvcc_flags: list[str]):
    # Paths in build lines are the checked source names, so they need no ninja escaping;
    # the variables are shell-quoted, and "$" is ninja's only special character in them.
    def variable(words):
        return shlex.join(words).replace("$", "$$")

    objects = [str(Path(cu).with_suffix(".o")) for cu in cu_files]
    # nvcc links libcudart statically by default, so the library depends on no CUDA
    # shared object: ctypes loads it on a machine without a GPU, and the CUDA runtime
    # torch was built against (maybe another major version) does not matter.
    lines = [
        "ninja_required_version = 1.3",
        f"nvcc = {variable([_require_nvcc()])}",
        f"flags = {variable(nvcc_flags)}",
        "",
        "rule compile",
        "  command = $nvcc $flags -c $in -o $out",
        "  description = nvcc $in",
        "",
        "rule link",
        "  command = $nvcc -shared $in -o $out",
        "  description = link $out",
        "",
        *(f"build {obj}: compile {cu}" for obj, cu in zip(objects, cu_files)),
        f"build {stem}.so: link {' '.join(objects)}",
        f"default {stem}.so",
    ]
    (directory / "build.ninja").write_text("\n".join(lines) + "\n")


def _ninja_path() -> str:
    found = shutil.which("ninja")
    if found:
        return found
    # The ninja wheel (a dependency) installs its binary among this interpreter's scripts,
    # which are on PATH only in an activated virtualenv.
    beside_python = os.path.join(sysconfig.get_path("scripts"), "ninja")
    if os.access(beside_python, os.X_OK):
        return beside_python
    raise BuildError("ninja not found: pip install ninja")


def build_time_limit() -> float | None:
    """FLASHGEN_BUILD_TIMEOUT: the seconds one module's build may take before it is stopped
    and raises BuildError (unset or 0: no limit). The fuzzer sets it, so that a spec whose
    compile runs away is a failed case with its seed, not a suite that never ends."""
    text = os.environ.get("FLASHGEN_BUILD_TIMEOUT", "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise BuildError(f"FLASHGEN_BUILD_TIMEOUT must be a number of seconds, not {text!r}") from None
    return seconds if seconds > 0 else None


def _run_ninja(directory: Path, stem: str, verbose: bool):
    # -v shows the nvcc command lines; a failure shows its command line in any case.
    command = [_ninja_path(), *(["-v"] if verbose else [])]
    limit = build_time_limit()
    process = subprocess.Popen(command, cwd=directory, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    stopped = threading.Event()

    def stop():
        # ninja, on SIGTERM, kills the process group of each command it runs (nvcc with its
        # cicc and ptxas), then exits; its output pipe then closes and the loop below ends.
        stopped.set()
        process.terminate()

    timer = threading.Timer(limit, stop) if limit is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    output = []
    try:
        # Read line by line so that a verbose build of many minutes shows progress as it goes.
        for line in process.stdout:
            output.append(line)
            if verbose:
                print(line, end="", flush=True)
        returncode = process.wait()
    finally:
        if timer is not None:
            timer.cancel()
    if stopped.is_set() and returncode != 0:   # (one that finished as the timer fired stands)
        raise BuildError(f"building {stem} took longer than FLASHGEN_BUILD_TIMEOUT ({limit:g} s) "
                         "and was stopped: raise the limit, or unset it for none",
                         "".join(output), command)
    if returncode != 0:
        raise BuildError(f"building {stem} failed", "".join(output), command)


def ptxas_report(sources: dict[str, str], arch: str, flags: list[str] = ()) -> dict[str, dict]:
    """Per kernel: registers, spill_stores, spill_loads, smem_static, stack (bytes), barriers,
    cubin_seconds (ptxas time for that kernel), wgmma_serialized (the warning's code where
    ptxas serialised the kernel's wgmmas, else None), file and mangled name, as ptxas reports them
    for each .cu compiled (not linked) with the flags `build` uses. Kernels are keyed by their
    demangled names where a demangler is found, else by their mangled names."""
    cu_files = _check_sources(sources)
    nvcc = _require_nvcc()
    nvcc_flags = _nvcc_flags(arch, flags)
    with tempfile.TemporaryDirectory(prefix="flashgen-ptxas-") as tmp:
        _write_sources(sources, Path(tmp))

        def compile_one(cu: str) -> dict[str, dict]:
            command = [nvcc, "-c", "-o", str(Path(cu).with_suffix(".o")), "-Xptxas", "-v",
                       "--resource-usage", *nvcc_flags, cu]
            result = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=False)
            output = result.stdout + result.stderr
            if result.returncode != 0:
                raise BuildError(f"nvcc failed on {cu} for {arch}", output, command)
            kernels = _parse_ptxas(output)
            for info in kernels.values():
                info["file"] = cu
            return kernels

        report = {}
        workers = min(len(cu_files), os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for kernels in pool.map(compile_one, cu_files):
                report.update(kernels)
    names = _demangle(list(report))
    return {names[mangled]: {**info, "mangled": mangled} for mangled, info in report.items()}


_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")
_TIME = re.compile(r"Compile time = ([\d.]+) ms")
# ptxas's warning that it serialised a kernel's wgmmas (C7510-C7520: "wgmma.mma_async
# instructions are serialized due to ..."), which costs the overlap the kernels rely on
_SERIALIZED = re.compile(r"\((C75\d\d)\)[^']*wgmma[^']*serialized[^']*function '([^']+)'")


def _parse_ptxas(output: str) -> dict[str, dict]:
    """Kernel (mangled) -> its numbers, from `-Xptxas -v` output. "Used ..." and "Compile
    time" belong to the last entry function announced; "Function properties" name their
    function, which may be a device function (dropped) and comes before or after the
    entry line depending on the CUDA version."""
    kernels: dict[str, dict] = {}
    frames: dict[str, tuple[int, int, int]] = {}
    entry = properties_of = None
    for line in output.splitlines():
        if match := _ENTRY.search(line):
            entry = match.group(1)
            kernels[entry] = {"registers": 0, "spill_stores": 0, "spill_loads": 0,
                              "smem_static": 0, "stack": 0, "barriers": 0}
        elif match := _PROPERTIES.search(line):
            properties_of = match.group(1)
        elif (match := _FRAME.search(line)) and properties_of is not None:
            frames[properties_of] = tuple(int(g) for g in match.groups())
        elif (match := _USED.search(line)) and entry is not None:
            kernels[entry]["registers"] = int(match.group(1))
            for pattern, field in ((_BARRIERS, "barriers"), (_SMEM, "smem_static")):
                if found := pattern.search(line):
                    kernels[entry][field] = int(found.group(1))
        elif (match := _TIME.search(line)) and entry is not None:
            kernels[entry]["cubin_seconds"] = float(match.group(1)) / 1000
    for kernel, info in kernels.items():
        if kernel in frames:
            info["stack"], info["spill_stores"], info["spill_loads"] = frames[kernel]
        info["wgmma_serialized"] = None
    for code, kernel in _SERIALIZED.findall(output):
        if kernel in kernels:
            kernels[kernel]["wgmma_serialized"] = code
    return kernels


def _demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> demangled, through cu++filt (beside nvcc or on PATH) or else c++filt (kernel
    names use the same Itanium mangling); names stay mangled when neither is found."""
    nvcc = nvcc_path()
    candidates = [os.path.join(os.path.dirname(nvcc), "cu++filt")] if nvcc else []
    candidates += [shutil.which("cu++filt"), shutil.which("c++filt")]
    tool = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if tool is None or not names:
        return {name: name for name in names}
    result = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True,
                            check=False)
    demangled = result.stdout.splitlines()
    if result.returncode != 0 or len(demangled) != len(names):
        return {name: name for name in names}
    return dict(zip(names, demangled))
