"""Builds and loads the cpu backend's fused C++ kernels (cpu_kernels.cpp, cpu_linear_bf16.cpp) once per machine.

They are compiled on first use with torch's extension builder and the machine's C++ compiler, for this CPU's
instruction set, into a cache keyed by torch version and CPU flags (a home directory shared between different
CPUs gets one build each). Without a compiler, or with MODELCHIP_CPU_KERNELS=0, the backend runs the same ops
in eager PyTorch and says why in its fallback count.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path
from types import ModuleType

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("cpu_kernels.cpp", "cpu_linear_bf16.cpp")]
_loaded: tuple[ModuleType | None, str] | None = None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_dir() -> Path:
    root = Path(os.environ.get("MODELCHIP_CACHE", Path.home() / ".cache" / "modelchip"))
    key = hashlib.sha256(f"{torch.__version__}|{sys.version}|{_cpu_flags()}".encode()).hexdigest()[:12]
    return root / "cpu_kernels" / key


def load() -> tuple[ModuleType | None, str]:
    """(the kernels module, "") or (None, why not). Built on the first call in a process, cached after."""
    global _loaded
    if _loaded is None:
        _loaded = _build()
    return _loaded


def _build() -> tuple[ModuleType | None, str]:
    if os.environ.get("MODELCHIP_CPU_KERNELS", "1") == "0":
        return None, "fused kernels off (MODELCHIP_CPU_KERNELS=0)"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "aarch64", "arm64"):
        return None, f"fused kernels not built for {platform.machine()}"
    from torch.utils import cpp_extension

    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob("*.so")):
        print("modelchip: compiling the cpu backend's kernels for this machine (once, under a minute)...",
              file=sys.stderr, flush=True)
    flags = ["-O3", "-march=native" if machine in ("x86_64", "amd64") else "-mcpu=native"]
    if sys.platform.startswith("linux"):  # torch's parallel_for splits work only when built with OpenMP
        flags.append("-fopenmp")
    try:
        module = cpp_extension.load(name="modelchip_cpu_kernels", sources=[str(path) for path in SOURCES],
                                    extra_cflags=flags, build_directory=str(directory), verbose=False)
    except Exception as exc:  # no compiler, no headers, a failed build: run eager and say so
        reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        print(f"modelchip: cpu backend kernels unavailable ({reason}); running its ops in eager PyTorch",
              file=sys.stderr, flush=True)
        return None, f"fused kernels unavailable: {reason}"
    return module, ""
