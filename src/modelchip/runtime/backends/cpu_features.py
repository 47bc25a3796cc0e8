"""Which matrix instructions this CPU has, as the OS lets programs use them, read without building anything.

torch asks CPUID (and whether the OS saves the wide registers) for its own dispatch; its answers are reused
here. Where a torch lacks those helpers, the kernel flags Linux lists in /proc/cpuinfo stand in.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def _proc_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _ask_torch(helper: str, flag: str) -> bool:
    probe = getattr(torch.cpu, helper, None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            pass
    return flag in _proc_flags()


def has_avx512_bf16() -> bool:
    """AVX512-BF16: bfloat16 pair dot products into float32 (Cooper Lake, Sapphire Rapids on, Zen 4 on)."""
    return _ask_torch("_is_avx512_bf16_supported", "avx512_bf16")


def has_amx_bf16() -> bool:
    """AMX tiles with bfloat16 (Sapphire Rapids on)."""
    return _ask_torch("_is_amx_tile_supported", "amx_bf16")
