"""A GGUF file's (llama.cpp's format) header as an HF-style config.json dict, read without torch.

GGUF lists tensor dimensions fastest-first (ggml's `ne`), so a [out, in] matrix is stored as ne=[in, out]; shapes
here are reversed to row-major [out, in]. The runtime's loader (runtime/loaders/gguf.py) reads the tensors.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelchip.errors import ModelchipError

GGUF_MAGIC = b"GGUF"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def is_gguf(path: Path) -> bool:
    """True when the file starts with GGUF's magic bytes."""
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_config(path: str | Path) -> dict:
    """The HF-style config.json of a GGUF file's model (architectures llama, qwen2, qwen3)."""
    path = Path(path)
    metadata, infos, _ = read_header(path)
    check_architecture(path, metadata)
    return config_from_header(path, metadata, {t.name: t.shape for t in infos})


def check_architecture(path: Path, metadata: dict) -> None:
    """Refuse a GGUF whose architecture the families here cannot read, naming it."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelchipError(f"{path}: GGUF architecture {arch!r} is not supported; "
                             f"supported: {', '.join(ARCHITECTURES)}")


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
            import numpy as np  # here, not at the top: every command imports this module; few read GGUF

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
    import numpy as np
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


def config_from_header(path: Path, md: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict:
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
