"""Quantized weights as a checkpoint stores them, handed to backends without dequantizing.

A `QuantizedWeight` is the common currency between loaders, the backend contract and backends: loaders build
one per quantized linear weight, `prepare_linear` receives it (and may repack it into its own layout at the same
bit width), and the reference backend dequantizes it per call. The packed bytes are kept exactly as the format
lays them out, one output row after another, so a row permutation (GGUF's Q/K head order) is a row gather and
stacking q/k/v (or gate/up) into one matmul is a row concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from modelchip.errors import ModelchipError

# format -> (weights per block, bytes per block) for GGUF block formats (ggml-common.h's block_* structs)
GGUF_BLOCKS = {
    "q8_0": (32, 34),     # fp16 d, 32 x int8
    "q4_0": (32, 18),     # fp16 d, 16 bytes of nibbles (w = d * (q - 8))
    "q4_1": (32, 20),     # fp16 d, fp16 m, 16 bytes of nibbles (w = d * q + m)
    "q4_k": (256, 144),   # fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
    "q6_k": (256, 210),   # 128 bytes low nibbles, 64 bytes high bits, 16 int8 scales, fp16 d
}
SCALED_FORMATS = ("fp8_block", "int8_channel")
FORMATS = (*GGUF_BLOCKS, *SCALED_FORMATS)
ACTIVATIONS = (None, "int8_dynamic_token")


@dataclass(frozen=True)
class QuantizedWeight:
    """A linear weight [out_features, in_features] in a quantized format.

    format: a GGUF block format ("q8_0", "q4_0", "q4_1", "q4_k", "q6_k"; `data` is uint8
        [out_features, in_features // block * bytes_per_block], the file's bytes), or a tensor-scaled format
        ("fp8_block": `data` float8_e4m3fn [out, in] with `scales` float32 [ceil(out/bo), ceil(in/bi)] for
        `block_shape` (bo, bi), as DeepSeek-V3/Qwen3 FP8 checkpoints store `weight_scale_inv`;
        "int8_channel": `data` int8 [out, in] with `scales` float32 [out] (weight-only or W8A8 weights as
        compressed-tensors writes them; `activation` says whether activations are quantized too).
    compute_dtype: the dtype `linear` receives activations in and returns (the model's dtype), as a plain
        weight's own dtype says it; loaders leave float32 and the model sets its own before preparing.
    """

    format: str
    data: torch.Tensor
    out_features: int
    in_features: int
    scales: torch.Tensor | None = None
    block_shape: tuple[int, int] | None = None
    activation: str | None = None    # None (weight-only) or "int8_dynamic_token" (W8A8)
    compute_dtype: torch.dtype = torch.float32

    def __post_init__(self):
        problem = _layout_problem(self)
        if problem:
            raise ModelchipError(f"quantized weight [{self.out_features}, {self.in_features}] ({self.format}): "
                                 f"{problem}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def nbytes(self) -> int:
        """Bytes streamed per full read of the weight (packed data and scales)."""
        scales = 0 if self.scales is None else self.scales.numel() * self.scales.element_size()
        return self.data.numel() * self.data.element_size() + scales

    def with_compute_dtype(self, dtype: torch.dtype) -> QuantizedWeight:
        return replace(self, compute_dtype=dtype)


def _layout_problem(w: QuantizedWeight) -> str:
    """'' when data/scales have the shapes and dtypes the format defines, else what is wrong."""
    out, inp = w.out_features, w.in_features
    if w.activation not in ACTIVATIONS:
        return f"activation {w.activation!r} is not one of {ACTIVATIONS}"
    if w.format in GGUF_BLOCKS:
        block, nbytes = GGUF_BLOCKS[w.format]
        if inp % block:
            return f"in_features must be a multiple of the {block}-weight block"
        want = (out, inp // block * nbytes)
        if w.data.dtype != torch.uint8 or tuple(w.data.shape) != want:
            return f"data must be uint8 {list(want)}, got {w.data.dtype} {list(w.data.shape)}"
        return ""
    if w.format == "fp8_block":
        if w.block_shape is None or len(w.block_shape) != 2 or min(w.block_shape) < 1:
            return "block_shape (rows, cols) is required"
        bo, bi = w.block_shape
        want = (-(-out // bo), -(-inp // bi))
        if w.data.dtype != torch.float8_e4m3fn or tuple(w.data.shape) != (out, inp):
            return f"data must be float8_e4m3fn {[out, inp]}, got {w.data.dtype} {list(w.data.shape)}"
        if w.scales is None or w.scales.dtype != torch.float32 or tuple(w.scales.shape) != want:
            got = None if w.scales is None else (w.scales.dtype, list(w.scales.shape))
            return f"scales must be float32 {list(want)} for blocks {w.block_shape}, got {got}"
        return ""
    if w.format == "int8_channel":
        if w.data.dtype != torch.int8 or tuple(w.data.shape) != (out, inp):
            return f"data must be int8 {[out, inp]}, got {w.data.dtype} {list(w.data.shape)}"
        if w.scales is None or w.scales.dtype != torch.float32 or tuple(w.scales.shape) != (out,):
            return f"scales must be float32 [{out}]"
        return ""
    return f"unknown format; known: {', '.join(FORMATS)}"


def select_rows(w: QuantizedWeight, rows: torch.Tensor) -> QuantizedWeight:
    """The weight made of rows `rows` (int64) of `w`, in that order: packed rows move whole. FP8 block scales
    are first spread to one scale row per weight row (block_shape (1, bi)), since a gather breaks row blocks."""
    if w.format == "fp8_block":
        w = _per_row_blocks(w)
    scales = None if w.scales is None else w.scales.index_select(0, rows)
    return replace(w, data=w.data.index_select(0, rows), scales=scales, out_features=rows.numel())


def stack_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """One weight whose rows are the parts' rows in order (q, k, v stacked into one matmul). The parts must
    share a format, in_features and activation scheme."""
    first = parts[0]
    for p in parts[1:]:
        if (p.format, p.in_features, p.activation) != (first.format, first.in_features, first.activation):
            raise ModelchipError(f"cannot stack a {p.format} weight [{p.out_features}, {p.in_features}] onto a "
                                 f"{first.format} weight [{first.out_features}, {first.in_features}]")
    if len(parts) == 1:
        return first
    if first.format == "fp8_block":
        bo = first.block_shape[0]
        aligned = all(p.block_shape == first.block_shape for p in parts) and \
            all(p.out_features % bo == 0 for p in parts[:-1])
        if not aligned:  # a part ending mid-block: give every row its own scale row instead
            parts = [_per_row_blocks(p) for p in parts]
    scales = None if first.scales is None else torch.cat([p.scales for p in parts], dim=0)
    return replace(parts[0], data=torch.cat([p.data for p in parts], dim=0), scales=scales,
                   out_features=sum(p.out_features for p in parts))


def _per_row_blocks(w: QuantizedWeight) -> QuantizedWeight:
    bo, bi = w.block_shape
    if bo == 1:
        return w
    scales = w.scales.repeat_interleave(bo, dim=0)[: w.out_features].contiguous()
    return replace(w, scales=scales, block_shape=(1, bi))


def bits_per_weight(fmt: str, in_features: int = 4096, block_shape: tuple[int, int] = (128, 128),
                    out_features: int = 4096) -> float:
    """Bits streamed per weight, scales included (GGUF blocks exactly; the scaled formats for a matrix of the
    given size)."""
    if fmt in GGUF_BLOCKS:
        block, nbytes = GGUF_BLOCKS[fmt]
        return 8 * nbytes / block
    if fmt == "fp8_block":
        bo, bi = block_shape
        return 8 + 32 * -(-out_features // bo) * -(-in_features // bi) / (out_features * in_features)
    if fmt == "int8_channel":
        return 8 + 32 / in_features
    raise ModelchipError(f"unknown quantized format {fmt!r}; known: {', '.join(FORMATS)}")
