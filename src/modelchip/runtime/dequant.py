"""The arithmetic of the quantized formats in plain PyTorch: weights back to floats, and W8A8's activation
quantization. The reference backend runs linear through these per call; backends without a kernel for a
format dequantize once with them. Written from the formats' definitions (ggml-common.h's block structs and
ggml-quants.c's dequantize_row_*, the FP8/INT8 scale conventions); the conformance kit checks them against
the gguf package's own numpy dequantizer and plain float64 math."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from modelchip.runtime.quant import GGUF_BLOCKS, QuantizedWeight


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] little-endian bytes -> [n, 1] float32."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, k] bytes -> [n, 2k]: the k low nibbles, then the k high nibbles (ggml's order within a group)."""
    return torch.cat((qs & 0x0F, qs >> 4), dim=-1)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * b[:, 2:].contiguous().view(torch.int8).float()


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * (_nibbles(b[:, 2:]).float() - 8)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * _nibbles(b[:, 4:]).float() + _f16(b[:, 2:4])


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin, s = _f16(b[:, :2]), _f16(b[:, 2:4]), b[:, 4:16]
    # 8 sub-blocks of 32, each with a 6-bit scale and min: bytes 0-3 hold scales 0-3 (+2 high bits of 4-7),
    # bytes 4-7 mins 0-3 (+ high bits), bytes 8-11 the low 4 bits of scales and mins 4-7
    lo_s, lo_m, mixed = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scale = torch.cat((lo_s & 63, (mixed & 0x0F) | ((lo_s >> 2) & 0x30)), dim=1).float()
    mins = torch.cat((lo_m & 63, (mixed >> 4) | ((lo_m >> 2) & 0x30)), dim=1).float()
    q = b[:, 16:].reshape(n, 4, 32)  # 4 groups of 32 bytes: low nibbles are sub-block 2j, high 2j+1
    q = torch.stack((q & 0x0F, q >> 4), dim=2).reshape(n, 8, 32).float()
    return ((d * scale)[:, :, None] * q - (dmin * mins)[:, :, None]).reshape(n, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh = b[:, :128].reshape(n, 2, 1, 64), b[:, 128:192].reshape(n, 2, 1, 32)
    scales, d = b[:, 192:208].contiguous().view(torch.int8).float(), _f16(b[:, 208:210])
    low = torch.cat((ql & 0x0F, ql >> 4), dim=2).reshape(n, 8, 32)  # per 128-half: 64 low, 64 high nibbles
    high = torch.cat([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=2).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int16) - 32).reshape(n, 16, 16).float()
    return ((d * scales)[:, :, None] * q).reshape(n, 256)


GGUF_DEQUANT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1, "q4_k": _q4_k, "q6_k": _q6_k}


def dequantize(w: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight as a float tensor [out, in] (computed in float32, then cast to `dtype`)."""
    if w.format in GGUF_BLOCKS:
        block, nbytes = GGUF_BLOCKS[w.format]
        dense = GGUF_DEQUANT[w.format](w.data.reshape(-1, nbytes))
    elif w.format == "fp8_block":
        bo, bi = w.block_shape
        scales = w.scales.repeat_interleave(bo, dim=0)[: w.out_features].repeat_interleave(bi, dim=1)
        dense = w.data.float() * scales[:, : w.in_features]
    else:  # int8_channel
        dense = w.data.float() * w.scales[:, None]
    return dense.reshape(w.out_features, w.in_features).to(dtype)


def quantize_activation_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W8A8's dynamic per-token symmetric quantization, as vLLM's int8 kernels define it: scale = max|x| / 127
    per row, q = round-half-even(x * (127 / max|x|)) in float32 (an all-zero row gets scale 0 and q 0).
    Returns (q as float32 [T, in], scale float32 [T, 1])."""
    x32 = x.float()
    amax = x32.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return torch.round(x32 * inv).clamp_(-128, 127), amax / 127.0


def quantized_linear(x: torch.Tensor, w: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ dequantize(w).T (+ bias) in x's dtype: the reference's (slow, per call) quantized linear."""
    if w.activation == "int8_dynamic_token":
        q, sx = quantize_activation_int8(x)
        # integer products summed in float32: exact while |sum| < 2^24 (127 * 127 * in, in < 1040), and
        # otherwise rounded as an fp32 accumulator would
        out = F.linear(q, w.data.float()) * sx * w.scales
        out = out.to(x.dtype)
        return out if bias is None else out + bias
    return F.linear(x, dequantize(w, x.dtype), bias)
