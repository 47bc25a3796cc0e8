"""Read a GGUF file (llama.cpp's format) into an HF-style config, HF-named dequantized tensors and a tokenizer.

GGUF lists tensor dimensions fastest-first (ggml's `ne`), so a [out, in] matrix is stored as ne=[in, out]; shapes
here are reversed to row-major [out, in]. llama.cpp's converter permutes the rows of q/k projections of
`llama` models (interleaved RoPE pairs -> its own layout); that is undone here so tensors match HF checkpoints.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.tokenizer import Tokenizer

GGUF_MAGIC = b"GGUF"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
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
    tensors: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    metadata: dict


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> GGUFCheckpoint:
    """Config, HF-named tensors (dequantized to `dtype`), tokenizer and raw metadata of a GGUF file."""
    path = Path(path)
    metadata, infos, data_start = read_header(path)
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelchipError(f"{path}: GGUF architecture {arch!r} is not supported; "
                             f"supported: {', '.join(ARCHITECTURES)}")
    names = {t.name: _hf_name(path, t.name) for t in infos}
    for t in infos:  # refuse before dequantizing anything
        if t.type not in SUPPORTED_TYPES:
            raise ModelchipError(f"{path}: tensor {t.name!r} has type {t.type}, which modelchip cannot dequantize; "
                                 f"supported: {', '.join(SUPPORTED_TYPES)}")
    config = _config(path, metadata, {t.name: t.shape for t in infos})
    tokenizer = Tokenizer.from_gguf(metadata)
    tensors = {}
    with path.open("rb") as f:
        for t in infos:
            f.seek(data_start + t.offset)
            raw = f.read(t.nbytes)
            if len(raw) != t.nbytes:
                raise ModelchipError(f"{path} is truncated: tensor {t.name!r} needs bytes up to "
                                     f"{data_start + t.offset + t.nbytes}, the file ends at {path.stat().st_size}")
            w = _dequantize(raw, t)
            if arch == "llama" and t.name.split(".")[-2] in ("attn_q", "attn_k"):
                heads = config["num_attention_heads"] if ".attn_q." in t.name else config["num_key_value_heads"]
                w = _unpermute(w, heads)
            tensors[names[t.name]] = torch.from_numpy(w).to(dtype)
    return GGUFCheckpoint(config=config, tensors=tensors, tokenizer=tokenizer, metadata=metadata)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # row-major (ne reversed)
    type: str  # ggml type name, e.g. "Q4_1"
    offset: int  # from the start of the data section
    nbytes: int


class _Truncated(Exception):
    pass


class _Cursor:
    """Bounds-checked little-endian reads; running off the end means the file is cut short."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Truncated(f"needs byte {self.pos + n}, the file has {len(self.buf)}")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8")

    def value(self, vtype: int):
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.scalar("<I"), self.scalar("<Q")
            if itype in (_STRING, _ARRAY):
                return [self.value(itype) for _ in range(n)]
            dt = np.dtype(_SCALARS[itype])
            return np.frombuffer(self.take(n * dt.itemsize), dtype=dt).tolist()
        return self.scalar(_SCALARS[vtype])


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_header(path: Path) -> tuple[dict[str, Any], list[TensorInfo], int]:
    """Metadata, tensor descriptions and the data section's offset, read without touching tensor data.

    Parsed here rather than with gguf.GGUFReader, which takes seconds on a 49k-token vocabulary and fails on a
    damaged file with whatever numpy raises.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if not path.is_file():
        raise ModelchipError(f"GGUF file {path} does not exist" if not path.exists() else f"{path} is not a file")
    with path.open("rb") as f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelchipError(f"{path} is not a GGUF file (corrupt: magic {magic!r}, expected {GGUF_MAGIC!r})")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf)
            cur.take(4)
            try:
                version = cur.scalar("<I")
                if version not in (2, 3):
                    raise ModelchipError(f"{path}: GGUF version {version} is not supported (2, 3; little-endian)")
                n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
                metadata = {}
                for _ in range(n_kv):
                    key = cur.string()
                    metadata[key] = cur.value(cur.scalar("<I"))
                infos = []
                for _ in range(n_tensors):
                    name = cur.string()
                    ne = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
                    qtype = GGMLQuantizationType(cur.scalar("<I"))
                    block, size = GGML_QUANT_SIZES[qtype]
                    if ne[0] % block:
                        raise ValueError(f"tensor {name!r} rows of {ne[0]} are not whole {qtype.name} blocks")
                    nbytes = int(np.prod(ne[1:], dtype=np.int64)) * (ne[0] // block) * size
                    infos.append(TensorInfo(name, tuple(reversed(ne)), qtype.name, cur.scalar("<Q"), nbytes))
            except _Truncated as exc:
                raise ModelchipError(f"{path} is truncated or corrupt: its header {exc}") from exc
            except ModelchipError:
                raise
            except (KeyError, ValueError, UnicodeDecodeError) as exc:  # unknown type ids, bad sizes, bad text
                raise ModelchipError(f"{path} is corrupt: unreadable GGUF header ({type(exc).__name__}: {exc})") \
                    from exc
            alignment = metadata.get("general.alignment", 32)
            data_start = -(-cur.pos // alignment) * alignment
            size = len(buf)
    for t in infos:
        if data_start + t.offset + t.nbytes > size:
            raise ModelchipError(f"{path} is truncated: tensor {t.name!r} ends at byte "
                                 f"{data_start + t.offset + t.nbytes}, the file has {size}")
    return metadata, infos, data_start


def _hf_name(path: Path, name: str) -> str:
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _BLOCK_RE.fullmatch(name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    # e.g. rope_freqs (Llama 3.1 RoPE scaling) or MoE experts: dropping them would silently change the model
    raise ModelchipError(f"{path}: tensor {name!r} has no place in the supported dense decoder layout")


def _config(path: Path, md: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict:
    arch = md["general.architecture"]

    def get(key: str, default: Any = None, required: bool = False) -> Any:
        if required and f"{arch}.{key}" not in md:
            raise ModelchipError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return md.get(f"{arch}.{key}", default)

    heads = get("attention.head_count", required=True)
    if "token_embd.weight" not in shapes:
        raise ModelchipError(f"{path}: GGUF file has no token_embd.weight tensor")
    tokens = md.get("tokenizer.ggml.tokens")
    config = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": get("embedding_length", required=True),
        "intermediate_size": get("feed_forward_length", required=True),
        "num_hidden_layers": get("block_count", required=True),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": get("rope.freq_base", 10000.0),
        "max_position_embeddings": get("context_length", 2048),
        "vocab_size": get("vocab_size") or (len(tokens) if tokens else shapes["token_embd.weight"][0]),
        "tie_word_embeddings": "output.weight" not in shapes,
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": md.get("tokenizer.ggml.padding_token_id"),
    }
    if get("attention.key_length") is not None:
        config["head_dim"] = get("attention.key_length")
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in shapes
    scaling = get("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling not in ("linear", "yarn"):
            raise ModelchipError(f"{path}: RoPE scaling {scaling!r} is not supported (linear, yarn)")
        config["rope_scaling"] = {"rope_type": scaling, "factor": get("rope.scaling.factor", 1.0)}
        if get("rope.scaling.original_context_length") is not None:
            config["rope_scaling"]["original_max_position_embeddings"] = get("rope.scaling.original_context_length")
    return config


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
