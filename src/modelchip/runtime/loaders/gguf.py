"""Read a GGUF file (llama.cpp's format) into an HF-style config, HF-named tensors and a tokenizer.

GGUF lists tensor dimensions fastest-first (ggml's `ne`), so a [out, in] matrix is stored as ne=[in, out]; shapes
here are reversed to row-major [out, in]. llama.cpp's converter permutes the rows of q/k projections of
`llama` models (interleaved RoPE pairs -> its own layout); that is undone here so tensors match HF checkpoints.

Block-quantized matrices (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) come out as `QuantizedWeight`s holding the file's bytes
(the q/k row permutation moves whole packed rows) when `keep_quantized` is set; `load_weights` decides
which of them stay packed (linear weights) and which are dequantized (the embedding table, read by row).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.quant import GGUF_BLOCKS, QuantizedWeight, select_rows
from modelchip.runtime.tokenizer import Tokenizer
from modelchip.spec.gguf_config import ARCHITECTURES, TensorInfo, check_architecture, config_from_header, read_header

__all__ = ["ARCHITECTURES", "GGUFCheckpoint", "SUPPORTED_TYPES", "TensorInfo", "load_gguf", "read_header"]
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")

_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


@dataclass
class GGUFCheckpoint:
    config: dict
    tensors: dict[str, torch.Tensor | QuantizedWeight]
    tokenizer: Tokenizer
    metadata: dict


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32, keep_quantized: bool = False) -> GGUFCheckpoint:
    """Config, HF-named tensors, tokenizer and raw metadata of a GGUF file. Float tensors are cast to `dtype`;
    block-quantized matrices are dequantized to `dtype`, or with `keep_quantized` stay packed as
    `QuantizedWeight`s (what the runtime loads by default)."""
    path = Path(path)
    metadata, infos, data_start = read_header(path)
    check_architecture(path, metadata)
    arch = metadata["general.architecture"]
    names = {t.name: _hf_name(path, t.name) for t in infos}
    for t in infos:  # refuse before dequantizing anything
        if t.type not in SUPPORTED_TYPES:
            raise ModelchipError(f"{path}: tensor {t.name!r} has type {t.type}, which modelchip cannot dequantize; "
                                 f"supported: {', '.join(SUPPORTED_TYPES)}")
    config = config_from_header(path, metadata, {t.name: t.shape for t in infos})
    tokenizer = Tokenizer.from_gguf(metadata)
    tensors = {}
    with path.open("rb") as f:
        for t in infos:
            f.seek(data_start + t.offset)
            raw = f.read(t.nbytes)
            if len(raw) != t.nbytes:
                raise ModelchipError(f"{path} is truncated: tensor {t.name!r} needs bytes up to "
                                     f"{data_start + t.offset + t.nbytes}, the file ends at {path.stat().st_size}")
            permuted = arch == "llama" and t.name.split(".")[-2] in ("attn_q", "attn_k")
            heads = config["num_attention_heads"] if ".attn_q." in t.name else config["num_key_value_heads"]
            if keep_quantized and t.type.lower() in GGUF_BLOCKS and len(t.shape) == 2:
                packed = QuantizedWeight(t.type.lower(), torch.frombuffer(bytearray(raw), dtype=torch.uint8)
                                         .reshape(t.shape[0], -1), t.shape[0], t.shape[1])
                if permuted:
                    packed = select_rows(packed, torch.from_numpy(_unpermute(np.arange(t.shape[0]), heads)))
                tensors[names[t.name]] = packed
                continue
            w = _dequantize(raw, t)
            if permuted:
                w = _unpermute(w, heads)
            tensors[names[t.name]] = torch.from_numpy(w).to(dtype)
    return GGUFCheckpoint(config=config, tensors=tensors, tokenizer=tokenizer, metadata=metadata)


def _hf_name(path: Path, name: str) -> str:
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _BLOCK_RE.fullmatch(name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    # e.g. rope_freqs (Llama 3.1 RoPE scaling) or MoE experts: dropping them would silently change the model
    raise ModelchipError(f"{path}: tensor {name!r} has no place in the supported dense decoder layout")


def _dequantize(raw: bytes, t: TensorInfo) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    if t.type in ("F32", "F16"):
        return np.frombuffer(raw, dtype="<f4" if t.type == "F32" else "<f2").astype(np.float32).reshape(t.shape)
    data = np.frombuffer(raw, dtype=np.uint8).reshape(*t.shape[:-1], -1)  # rows of whole blocks
    return dequantize(data, GGMLQuantizationType[t.type]).reshape(t.shape)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf `permute` for q/k rows (per head: halves -> interleaved pairs)."""
    half = w.shape[0] // heads // 2
    return np.ascontiguousarray(w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))
