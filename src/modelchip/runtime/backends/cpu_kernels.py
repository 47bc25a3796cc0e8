"""Builds and loads the cpu backend's fused C++ kernels (cpu_kernels.cpp, cpu_linear_bf16.cpp) once per machine.

They are compiled on first use with torch's extension builder and the machine's C++ compiler into a cache keyed
by torch and Python version, architecture and the sources. No -march flag: the loops are compiled once per
instruction set with function-level targets (AVX-512, AVX2, baseline; the bfloat16 matmul for AVX512-BF16)
and the module picks by CPUID when it loads, so one build serves every x86 CPU and each runs the widest copy
it has (`isa()` says which). Without a compiler, or with MODELCHIP_CPU_KERNELS=0, the backend runs the same
ops in eager PyTorch and says why in its fallback count.
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
HEADERS = [Path(__file__).with_name("cpu_kernels_isa.h")]
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
    flags = ["-O3", "-Wno-psabi"]  # psabi: 64-byte vectors passed between the baseline copy's own functions
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
