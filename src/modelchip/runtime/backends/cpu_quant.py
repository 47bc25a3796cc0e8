"""Quantized linear weights on the cpu backend.

GGUF Q8_0, Q4_0 and Q4_1 stay packed at their bit width and run through the kernels' int8 matmul
(cpu_linear_quant.cpp: activations quantized per 32-block, AVX512-VNNI / AVX2 / plain C++ picked by CPUID), so
a decode step reads 8.5 or 4.5-5 bits a weight instead of bfloat16's 16. Every other format (Q4_K, Q6_K,
block-scaled FP8, per-channel INT8), and these three where the kernels are not built, is dequantized once and
runs on the dense path in the activations' dtype; the backend counts each such weight in `fallbacks`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.quant import GGUF_BLOCKS, QuantizedWeight

KERNEL_FORMATS = ("q8_0", "q4_0", "q4_1")


@dataclass(frozen=True)
class QuantLinear:
    """What `prepare_linear` returns for a kernel format: the blocks regrouped 16 rows at a time
    (uint8 [ceil(out / 16), in / 32, 16 * bytes per block]); `linear` gives outputs in the activations' dtype."""

    packed: torch.Tensor
    format: str
    out_features: int
    in_features: int


@dataclass
class DequantizedLinear:
    """A quantized weight with no packed kernel here: dequantized once per activation dtype, on first use (the
    dtype is known only when activations arrive), and kept in the dense path's layout."""

    weight: QuantizedWeight
    dense: dict[torch.dtype, object] = field(default_factory=dict)

    def for_dtype(self, dtype: torch.dtype, prepare: Callable[[torch.Tensor], object]) -> object:
        if dtype not in self.dense:
            self.dense[dtype] = prepare(dequantize(self.weight).to(dtype))
        return self.dense[dtype]


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


def prepare_packed(kernels, weight: QuantizedWeight) -> QuantLinear:
    packed = kernels.prepare_linear_quant(weight.data, weight.format, weight.out_features, weight.in_features)
    return QuantLinear(packed, weight.format, weight.out_features, weight.in_features)


def linear_packed(kernels, x: torch.Tensor, weight: QuantLinear, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] (float32 or bfloat16) @ weight.T, in x's dtype."""
    rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    out = kernels.linear_quant(rows, weight.packed, weight.format, weight.out_features, bias)
    return out if x.dim() == 2 else out.view(*x.shape[:-1], weight.out_features)


def check(weight: QuantizedWeight) -> None:
    """Refuse, naming the problem, a weight whose data or scales do not fit its format and shape."""
    out, inp = weight.shape
    if weight.format in GGUF_BLOCKS:
        per_block, nbytes = GGUF_BLOCKS[weight.format]
        want = (out, inp // per_block * nbytes)
        if inp % per_block or weight.data.dtype != torch.uint8 or tuple(weight.data.shape) != want:
            raise ModelchipError(f"{weight.format} weight {out}x{inp}: data must be uint8 {list(want)} with in "
                                 f"a multiple of {per_block}, got {weight.data.dtype} {list(weight.data.shape)}")
        return
    if tuple(weight.data.shape) != (out, inp):
        raise ModelchipError(f"{weight.format} weight {out}x{inp}: data is {list(weight.data.shape)}")
    if weight.format == "fp8_block" and weight.scales is not None and weight.block_shape is not None:
        bo, bi = weight.block_shape
        if tuple(weight.scales.shape) != (-(-out // bo), -(-inp // bi)):
            raise ModelchipError(f"fp8_block weight {out}x{inp} in {bo}x{bi} blocks: scales are "
                                 f"{list(weight.scales.shape)}")
        return
    if weight.format == "int8_channel" and weight.scales is not None:
        if weight.scales.numel() != out:
            raise ModelchipError(f"int8_channel weight {out}x{inp}: {weight.scales.numel()} scales")
        return
    raise ModelchipError(f"cannot dequantize a {weight.format!r} weight (scales: {weight.scales is not None}, "
                         f"block_shape: {weight.block_shape})")


def dequantize(weight: QuantizedWeight) -> torch.Tensor:
    """float32 [out, in]: GGUF blocks by the gguf package's own dequantization, scaled formats by their scales."""
    check(weight)
    out, inp = weight.shape
    if weight.format in GGUF_BLOCKS:
        from gguf import GGMLQuantizationType, quants

        values = quants.dequantize(weight.data.numpy(), GGMLQuantizationType[weight.format.upper()])
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    if weight.format == "fp8_block":
        bo, bi = weight.block_shape
        scales = weight.scales.float().repeat_interleave(bo, 0)[:out].repeat_interleave(bi, 1)[:, :inp]
        return weight.data.float() * scales
    return weight.data.float() * weight.scales.float().reshape(out, 1)
