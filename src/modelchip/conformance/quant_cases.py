"""Quantized linear cases: one weight per format, built the way the format's writers build it (GGUF Q8_0/Q4_0/
Q4_1 by the gguf package's quantizer; Q4_K/Q6_K, which it cannot quantize, as random blocks with sane fp16
scales; FP8 with scales that differ block to block; INT8 weight-only and W8A8), each checked against float64
math on the independently dequantized weight (oracle.dequantized_weight) under the format's tolerance
(checks.quantized_close)."""

from __future__ import annotations

import numpy as np
import torch

from modelchip.conformance.checks import Case, quantized_close
from modelchip.runtime.quant import GGUF_BLOCKS, QuantizedWeight

# (label, tokens, in_features, out_features, bias): a decode row, and a prefill block with a bias and a
# row count that is no multiple of anything
SHAPES = (("decode", 1, 512, 96, False), ("prefill + bias", 17, 256, 160, True))
FP8_SHAPES = (("decode", 1, 384, 256, False), ("prefill + bias, partial blocks", 17, 320, 200, True))
VARIANTS = ("q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "fp8_block", "int8_channel", "int8_channel_w8a8")


def quantized_weight(variant: str, out: int, inp: int, seed: int, dtype: torch.dtype = torch.float32
                     ) -> QuantizedWeight:
    """A weight [out, in] in `variant` (a format, or "int8_channel_w8a8") whose values are about N(0, 1/in)."""
    rng = np.random.default_rng(seed)
    std = inp ** -0.5
    if variant in GGUF_BLOCKS:
        block, nbytes = GGUF_BLOCKS[variant]
        if variant in ("q4_k", "q6_k"):
            raw = rng.integers(0, 256, (out * inp // block, nbytes), dtype=np.uint8)
            # |q * scale| reaches ~15 * 63 (Q4_K) or ~32 * 127 (Q6_K) units of d
            d = rng.uniform(0.5, 1.5, (len(raw), 2)) * std / (300 if variant == "q4_k" else 2000)
            at = slice(0, 4) if variant == "q4_k" else slice(208, 210)
            raw[:, at] = d[:, : (2 if variant == "q4_k" else 1)].astype(np.float16).view(np.uint8)
        else:
            from gguf import GGMLQuantizationType
            from gguf.quants import quantize

            raw = quantize((rng.standard_normal((out, inp)) * std).astype(np.float32),
                           GGMLQuantizationType[variant.upper()])
        data = torch.from_numpy(np.ascontiguousarray(raw).reshape(out, -1))
        return QuantizedWeight(variant, data, out, inp, compute_dtype=dtype)
    if variant == "fp8_block":
        bo, bi = 128, 128
        values = torch.from_numpy(rng.standard_normal((out, inp)).clip(-448, 448)).to(torch.float8_e4m3fn)
        scales = torch.from_numpy(np.exp(rng.uniform(-1.5, 1.5, (-(-out // bo), -(-inp // bi)))) * std / 2)
        return QuantizedWeight("fp8_block", values, out, inp, scales.float(), (bo, bi), compute_dtype=dtype)
    values = torch.from_numpy(rng.integers(-127, 128, (out, inp)).astype(np.int8))
    scales = torch.from_numpy(rng.uniform(0.5, 1.5, out) * std / 64).float()
    activation = "int8_dynamic_token" if variant == "int8_channel_w8a8" else None
    return QuantizedWeight("int8_channel", values, out, inp, scales, activation=activation, compute_dtype=dtype)


def quantized_linear(dt: torch.dtype, formats: frozenset[str], prepares_weights: bool) -> list[Case]:
    """Every variant whose format the backend takes, in activation dtype `dt`."""
    from modelchip.conformance.op_cases import Rand, _shape

    out = []
    for variant in VARIANTS:
        fmt = "int8_channel" if variant.startswith("int8_channel") else variant
        if fmt not in formats:
            continue
        for label, t, i, o, bias in FP8_SHAPES if fmt == "fp8_block" else SHAPES:
            r = Rand(f"quantized {variant} {label}")
            w = quantized_weight(variant, o, i, int(r.ints(2 ** 31, 1)), dt)
            x = r.normal(t, i, dtype=dt)
            b = r.normal(o, std=0.1, dtype=dt) if bias else None
            out.append(Case("linear", f"{variant} weight, {label}", dt, _shape(x=x) + f" w{[o, i]} {variant}",
                            (x, w, b), judge=quantized_close, prepare_arg=1 if prepares_weights else None))
    return out
