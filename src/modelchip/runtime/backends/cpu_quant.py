"""The cpu backend's quantized linear weights: one prepare function per format, chosen by `prepare_quantized`.

Until packed-byte kernels exist for a format, its weight is dequantized once here, at prepare, into the
backend's float packed path (counted in the backend's `fallbacks`): the model runs at float speed and float
bytes, and its output is the reference's. A kernel that streams the packed bytes replaces its format's
function in PREPARE (and teaches `CPUBackend.linear` its handle) without touching the rest.

W8A8 INT8 keeps its arithmetic: its int8 values are packed as floats (exact in bfloat16 and float32), the
activations are quantized per token at each call, and the scales multiply the output, as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from modelchip.runtime.dequant import dequantize
from modelchip.runtime.quant import QuantizedWeight

# (weight, the backend's prepare_linear for a float [out, in] tensor, count a fallback) -> handle
Prepare = Callable[[QuantizedWeight, Callable[..., object], Callable[[str], None]], object]


def _dequantized(w: QuantizedWeight, pack: Callable[..., object], count: Callable[[str], None]) -> object:
    count(f"linear: {w.format} weight dequantized at prepare to {str(w.compute_dtype).removeprefix('torch.')} "
          f"(no {w.format} kernel)")
    return pack(dequantize(w, w.compute_dtype))


def _int8_channel(w: QuantizedWeight, pack: Callable[..., object], count: Callable[[str], None]) -> object:
    if w.activation is None:
        return _dequantized(w, pack, count)
    count(f"linear: int8 W8A8 weight unpacked to {str(w.compute_dtype).removeprefix('torch.')} integers "
          "(no int8 kernel)")
    # the handle is the backend's float packing of the integers, carrying the row scales its linear applies
    return replace(pack(w.data.to(w.compute_dtype)), row_scales=w.scales)


PREPARE: dict[str, Prepare] = {
    "q8_0": _dequantized,
    "q4_0": _dequantized,
    "q4_1": _dequantized,
    "q4_k": _dequantized,
    "q6_k": _dequantized,
    "fp8_block": _dequantized,
    "int8_channel": _int8_channel,
}


def prepare_quantized(w: QuantizedWeight, pack: Callable[..., object], count: Callable[[str], None]) -> object:
    return PREPARE[w.format](w, pack, count)


def scaled_output(out: torch.Tensor, x_scale: torch.Tensor, row_scales: torch.Tensor,
                  bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """W8A8: integer dot products [T, out] times each token's and each row's scale, then the bias."""
    out = (out.float() * x_scale * row_scales).to(dtype)
    return out if bias is None else out + bias
