"""The cpu backend's quantized linear weights: one prepare function per format, chosen by `prepare_quantized`.

GGUF Q8_0, Q4_0 and Q4_1 stay packed at their bit width and run through the kernels' int8 matmul
(cpu_linear_quant.cpp: activations quantized per 32-block, AVX512-VNNI / AVX2 / plain C++ picked by CPUID), so
a decode step reads 8.5 or 4.5-5 bits a weight instead of bfloat16's 16. Every other format (Q4_K, Q6_K,
block-scaled FP8), and those three where the kernels are not built, is dequantized once here, at prepare, into
the backend's float packed path (counted in the backend's `fallbacks`).

W8A8 INT8 keeps its arithmetic: its int8 values are packed as floats (exact in bfloat16 and float32), the
activations are quantized per token at each call, and the scales multiply the output, as the reference does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.dequant import dequantize
from modelchip.runtime.quant import QuantizedWeight

# (weight, the backend's prepare_linear for a float [out, in] tensor, count a fallback, the built kernels or
# None) -> handle
Prepare = Callable[[QuantizedWeight, Callable[..., object], Callable[[str], None], object], object]
KERNEL_FORMATS = ("q8_0", "q4_0", "q4_1")  # run packed by the kernels' int8 matmul
KERNEL_ACTIVATIONS = (torch.float32, torch.bfloat16)  # what the int8 matmul reads


@dataclass(frozen=True)
class QuantLinear:
    """What `prepare_linear` returns for a kernel format: the blocks regrouped 16 rows at a time
    (uint8 [ceil(out / 16), in / 32, 16 * bytes per block]); `linear` gives outputs in the activations' dtype."""

    packed: torch.Tensor
    format: str
    out_features: int
    in_features: int


def choose_isa(kernels) -> None:
    """MODELCHIP_QUANT_ISA=avx512_vnni|avx2|baseline runs that copy of the quantized matmul (one this CPU has),
    e.g. to measure a narrower CPU's path end to end; unset, the widest the CPU runs (CPUID)."""
    wanted = os.environ.get("MODELCHIP_QUANT_ISA", "")
    if not wanted or kernels is None:
        return
    try:
        kernels.set_quant_isa(wanted)
    except RuntimeError as exc:
        raise ModelchipError(f"MODELCHIP_QUANT_ISA={wanted!r}: {str(exc).splitlines()[0]}") from exc


def linear_packed(kernels, x: torch.Tensor, weight: QuantLinear, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] (float32 or bfloat16) @ weight.T, in x's dtype."""
    rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    out = kernels.linear_quant(rows, weight.packed, weight.format, weight.out_features, bias)
    return out if x.dim() == 2 else out.view(*x.shape[:-1], weight.out_features)


def _dequantized(w: QuantizedWeight, pack: Callable[..., object], count: Callable[[str], None], kernels=None,
                 why: str = "") -> object:
    count(f"linear: {w.format} weight dequantized at prepare to {str(w.compute_dtype).removeprefix('torch.')} "
          f"({why or f'no {w.format} kernel'})")
    return pack(dequantize(w, w.compute_dtype))


def _packed(w: QuantizedWeight, pack: Callable[..., object], count: Callable[[str], None], kernels) -> object:
    """Q8_0/Q4_0/Q4_1: the kernels' int8 matmul over the packed blocks, where they are built (the backend sends
    only float32 and bfloat16 weights here, which is what the matmul reads)."""
    if kernels is None:
        return _dequantized(w, pack, count, why="cpu kernels not built")
    packed = kernels.prepare_linear_quant(w.data, w.format, w.out_features, w.in_features)
    return QuantLinear(packed, w.format, w.out_features, w.in_features)


def _int8_channel(w: QuantizedWeight, pack: Callable[..., object], count: Callable[[str], None],
                  kernels=None) -> object:
    if w.activation is None:
        return _dequantized(w, pack, count)
    count(f"linear: int8 W8A8 weight unpacked to {str(w.compute_dtype).removeprefix('torch.')} integers "
          "(no int8 kernel)")
    # the handle is the backend's float packing of the integers, carrying the row scales its linear applies
    return replace(pack(w.data.to(w.compute_dtype)), row_scales=w.scales)


PREPARE: dict[str, Prepare] = {
    "q8_0": _packed,
    "q4_0": _packed,
    "q4_1": _packed,
    "q4_k": _dequantized,
    "q6_k": _dequantized,
    "fp8_block": _dequantized,
    "int8_channel": _int8_channel,
}


def prepare_quantized(w: QuantizedWeight, pack: Callable[..., object], count: Callable[[str], None],
                      kernels=None) -> object:
    return PREPARE[w.format](w, pack, count, kernels)


def scaled_output(out: torch.Tensor, x_scale: torch.Tensor, row_scales: torch.Tensor,
                  bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """W8A8: integer dot products [T, out] times each token's and each row's scale, then the bias."""
    out = (out.float() * x_scale * row_scales).to(dtype)
    return out if bias is None else out + bias
