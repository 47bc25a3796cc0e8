"""What a model runs on when the caller does not say: the fastest built-in backend and dtype for the device.

On a CPU that is the cpu backend, in bfloat16 where the CPU multiplies bfloat16 natively (AVX512-BF16 dot
products or AMX tiles: half the bytes per weight, and decode is bandwidth-bound), else in float32 (without
those instructions bfloat16 is converted in software and runs slower than float32). The reference backend
runs only when asked: it is the one every other backend is checked against, not a fast path.
"""

from __future__ import annotations

import os
import sys

import torch

from modelchip.runtime.backends import check_device
from modelchip.runtime.backends.cpu_features import has_amx_bf16, has_avx512_bf16


def default_backend_and_dtype(device: str | torch.device = "cpu", backend: str | None = None,
                              dtype: str | torch.dtype | None = None) -> tuple[str, str | torch.dtype, str]:
    """(backend, dtype, why) for `device`, keeping whichever of `backend` and `dtype` the caller gave. `why` is
    one line for the user, saying what was chosen and on what grounds."""
    dev = check_device(device)  # a clear error for a device this torch cannot use, before choosing
    chosen_backend = backend or ("cpu" if dev.type == "cpu" and torch.backends.mkldnn.is_available() else "reference")
    if dtype is not None:
        chosen_dtype, reason = dtype, "as asked"
    elif chosen_backend != "cpu":
        chosen_dtype, reason = "float32", f"the {chosen_backend} backend's default"
    elif has_avx512_bf16() or has_amx_bf16():
        chosen_dtype = "bfloat16"
        reason = "this CPU multiplies bfloat16 natively (" + ", ".join(
            name for name, has in (("AVX512-BF16", has_avx512_bf16()), ("AMX", has_amx_bf16())) if has) + ")"
    else:
        chosen_dtype, reason = "float32", "this CPU has no AVX512-BF16 or AMX, where bfloat16 would be slower"
    shown = str(chosen_dtype).removeprefix("torch.")
    why = f"modelchip: {chosen_backend} backend, {shown} on {dev} ({reason}"
    why += "; --backend reference to check against the reference)" if chosen_backend != "reference" else ")"
    return chosen_backend, chosen_dtype, why


def announce(why: str) -> None:
    """Print the one-line choice to stderr, unless MODELCHIP_QUIET=1."""
    if os.environ.get("MODELCHIP_QUIET", "0") != "1":
        print(why, file=sys.stderr, flush=True)
