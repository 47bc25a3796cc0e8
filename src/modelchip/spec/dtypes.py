"""Number formats: bytes per element, and the names users may type for them.

Quantized weight formats count the bytes a matmul streams per weight, scales included: GGUF's blocks exactly
(Q8_0: 34 bytes per 32 weights = 8.5 bits; Q4_0 4.5; Q4_1 5.0; Q4_K 4.5; Q6_K 6.5625), and block-scaled FP8
with one float32 scale per 128x128 block (8.002 bits), as DeepSeek-V3 and Qwen3-FP8 publish it. Plain `fp8`
and `int8` stay one byte (their per-channel or per-block scales are under 0.1% of a real matrix)."""

from __future__ import annotations

from functools import cache

from modelchip.errors import unknown

BYTES = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "fp4": 0.5,
    "int4": 0.5,
    # block formats: bytes per block / weights per block (runtime.quant.GGUF_BLOCKS)
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "q4_k": 144 / 256,
    "q6_k": 210 / 256,
    "fp8_block": 1 + 4 / (128 * 128),
}

# formats whose math runs as another's (compute dtype, chip peaks): the scales are bookkeeping
BASE = {"fp8_block": "fp8"}

_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float8": "fp8",
    "e4m3": "fp8",
    "fp8_e4m3": "fp8",
    "nvfp4": "fp4",
    "mxfp4": "fp4",
    "fp8-block": "fp8_block",
    "fp8_block128": "fp8_block",
}


@cache  # the planner asks for the same few names hundreds of thousands of times
def canonical(name: str) -> str:
    """Canonical dtype name for user input such as 'bfloat16' or 'FP8'."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BYTES:
        raise unknown("dtype", name, list(BYTES))
    return key


@cache  # ~130,000 calls a plan
def nbytes(name: str) -> float:
    """Bytes per element of a dtype."""
    return BYTES[canonical(name)]
