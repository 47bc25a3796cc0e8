"""Quantized weights as a checkpoint stores them, handed to backends without dequantizing.

A `QuantizedWeight` is the common currency between loaders, the backend contract and backends: loaders build
one per quantized linear weight, `prepare_linear` receives it (and may repack it into its own layout at the same
bit width), and the reference backend dequantizes it per call. The packed bytes are kept exactly as the format
lays them out, one output row after another, so a row permutation (GGUF's Q/K head order) is a row gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# format -> (weights per block, bytes per block) for GGUF block formats (ggml-common.h's block_* structs)
GGUF_BLOCKS = {
    "q8_0": (32, 34),     # fp16 d, 32 x int8
    "q4_0": (32, 18),     # fp16 d, 16 bytes of nibbles (w = d * (q - 8))
    "q4_1": (32, 20),     # fp16 d, fp16 m, 16 bytes of nibbles (w = d * q + m)
    "q4_k": (256, 144),   # fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
    "q6_k": (256, 210),   # 128 bytes low nibbles, 64 bytes high bits, 16 int8 scales, fp16 d
}


@dataclass(frozen=True)
class QuantizedWeight:
    """A linear weight [out_features, in_features] in a quantized format.

    format: a GGUF block format ("q8_0", "q4_0", "q4_1", "q4_k", "q6_k"; `data` is uint8
        [out_features, in_features // block * bytes_per_block], the file's bytes), or a tensor-scaled format
        ("fp8_block": `data` float8_e4m3fn [out, in] with `scales` float32 [ceil(out/bo), ceil(in/bi)] for
        `block_shape` (bo, bi), as DeepSeek-V3/Qwen3 FP8 checkpoints store `weight_scale_inv`;
        "int8_channel": `data` int8 [out, in] with `scales` float32 [out] (weight-only or W8A8 weights as
        compressed-tensors writes them; `activation` says whether activations are quantized too).
    """

    format: str
    data: torch.Tensor
    out_features: int
    in_features: int
    scales: torch.Tensor | None = None
    block_shape: tuple[int, int] | None = None
    activation: str | None = None    # None (weight-only) or "int8_dynamic_token" (W8A8)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def nbytes(self) -> int:
        """Bytes streamed per full read of the weight (packed data and scales)."""
        scales = 0 if self.scales is None else self.scales.numel() * self.scales.element_size()
        return self.data.numel() * self.data.element_size() + scales
