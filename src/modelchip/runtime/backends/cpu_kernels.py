"""Builds and loads the cpu backend's fused C++ kernels (cpu_kernels.cpp, cpu_linear_bf16.cpp,
cpu_linear_f32.cpp, cpu_linear_quant.cpp, and cpu_decoder_layers.cpp, which runs them a whole decoder stack at a
time) once per machine.

They are compiled on first use with torch's extension builder and the machine's C++ compiler into a cache keyed
by torch and Python version, architecture and the sources. No -march flag: the loops are compiled once per
instruction set with function-level targets (AVX-512, AVX2, baseline; the bfloat16 matmul for AVX512-BF16)
and the module picks by CPUID when it loads, so one build serves every x86 CPU and each runs the widest copy
it has (`isa()` says which). Without a compiler, or with MODELCHIP_CPU_KERNELS=0, the backend runs the same
ops in eager PyTorch and says why in its fallback count. A failed build is remembered with its reason (a
FAILED file in the build directory), so later processes do not spend minutes failing again; deleting it or
MODELCHIP_CPU_KERNELS=rebuild retries. The build needs `ninja` (a dependency) and a C++ compiler.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from types import ModuleType

import torch

SOURCES = [Path(__file__).with_name(name) for name in (
    "cpu_kernels.cpp", "cpu_linear_bf16.cpp", "cpu_linear_f32.cpp", "cpu_linear_quant.cpp", "cpu_decoder_layers.cpp")]
HEADERS = [Path(__file__).with_name(name) for name in ("cpu_kernels_isa.h", "cpu_ops.h")]
_loaded: tuple[ModuleType | None, str] | None = None


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in SOURCES + HEADERS:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_dir() -> Path:
    """Where this torch, Python, architecture and these sources build (the CPU itself does not matter: the build
    carries a copy per instruction set)."""
    root = Path(os.environ.get("MODELCHIP_CACHE", Path.home() / ".cache" / "modelchip"))
    key = f"{torch.__version__}|{sys.version}|{platform.machine()}|{_sources_digest()}"
    return root / "cpu_kernels" / hashlib.sha256(key.encode()).hexdigest()[:12]


def load() -> tuple[ModuleType | None, str]:
    """(the kernels module, "") or (None, why not). Built on the first call in a process, cached after."""
    global _loaded
    if _loaded is None:
        _loaded = _build()
    return _loaded


def failure_marker() -> Path:
    """The file a failed build leaves in its build directory, holding why: later processes read it instead of
    compiling again (minutes, to fail the same way). Delete it, or set MODELCHIP_CPU_KERNELS=rebuild, to retry."""
    return build_dir() / "FAILED"


def _build() -> tuple[ModuleType | None, str]:
    setting = os.environ.get("MODELCHIP_CPU_KERNELS", "1")
    if setting == "0":
        return None, "fused kernels off (MODELCHIP_CPU_KERNELS=0)"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "aarch64", "arm64"):
        return None, f"fused kernels not built for {platform.machine()}"
    directory, marker = build_dir(), failure_marker()
    retry = f"delete {marker} or set MODELCHIP_CPU_KERNELS=rebuild to retry"
    if marker.is_file() and setting != "rebuild":
        reason = marker.read_text(errors="replace").splitlines()[0] if marker.stat().st_size else "unknown"
        return None, f"fused kernels unavailable: {reason} (an earlier build failed; {retry})"
    directory.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    _find_ninja()
    fresh = not any(directory.glob("*.so"))
    if fresh:
        # measured: 83 s of CPU time; 2 min 5 s of wall time on a 2-core Zen 4 at load 8 (BENCHMARKS.md)
        print("modelchip: compiling the cpu backend's kernels, once per torch version and modelchip release "
              "(about 80 s of CPU time: 1-2 minutes on 2 cores, more on a busy machine)...", file=sys.stderr,
              flush=True)
    flags = ["-O3", "-Wno-psabi"]  # psabi: 64-byte vectors passed between the baseline copy's own functions
    if sys.platform.startswith("linux"):  # torch's parallel_for splits work only when built with OpenMP
        flags.append("-fopenmp")
    start = time.monotonic()
    try:
        from torch.utils import cpp_extension

        with _build_lock(directory):
            module = cpp_extension.load(name="modelchip_cpu_kernels", sources=[str(path) for path in SOURCES],
                                        extra_cflags=flags, build_directory=str(directory), verbose=False)
    except Exception as exc:  # no compiler, no headers, no ninja, a failed build: run eager and say so
        reason = _first_error(str(exc)) or type(exc).__name__
        marker.write_text(f"{reason}\n\n{exc}\n")
        print(f"modelchip: cpu backend kernels unavailable ({reason}); running its ops in eager PyTorch. "
              f"Not retried in later processes: {retry}", file=sys.stderr, flush=True)
        return None, f"fused kernels unavailable: {reason}"
    if fresh:
        print(f"modelchip: kernels built in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return module, ""


@contextlib.contextmanager
def _build_lock(directory: Path):
    """Hold an OS lock on the build directory while torch builds or loads there. torch's own lock is a plain
    file that a process killed mid-build leaves behind, and every later process then waits on it forever; the
    OS drops ours when its holder dies, so whoever holds it knows a leftover torch lock is stale."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock alone
        yield
        return
    with open(directory / "modelchip.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (directory / "lock").unlink(missing_ok=True)  # torch's FileBaton: stale, since we hold the lock
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _find_ninja() -> None:
    """torch's extension builder runs `ninja` from PATH; the `ninja` package (a dependency) installs it next to
    the interpreter, which is not on PATH when a virtual environment's python runs without activation."""
    if shutil.which("ninja"):
        return
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (folder / "ninja").is_file():
            os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
            return
    try:
        import ninja

        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
    except (ImportError, AttributeError):
        pass  # the build then fails saying ninja is missing, and that is cached like any other failure


def _first_error(text: str) -> str:
    """The line that says what went wrong: a compiler's first `error:`, else the message's last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower()]
    return (errors[0] if errors else lines[-1] if lines else "")[:300]
