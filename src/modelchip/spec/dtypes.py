"""Number formats: bytes per element, and the names users may type for them."""

from __future__ import annotations

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
}

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
}


def canonical(name: str) -> str:
    """Canonical dtype name for user input such as 'bfloat16' or 'FP8'."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BYTES:
        raise unknown("dtype", name, list(BYTES))
    return key


def nbytes(name: str) -> float:
    """Bytes per element of a dtype."""
    return BYTES[canonical(name)]
