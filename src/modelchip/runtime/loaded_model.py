"""`LoadedModel`: a checkpoint resolved, checked and loaded onto a backend, with what serving it needs.

The runtime's top: spec, weights on the backend, tokenizer, cache layouts, prompt checks and one-shot logits.
The engine schedules requests over it; `modelchip.LLM` (modelchip/llm.py) puts the two together.
"""

from __future__ import annotations

from collections import Counter

import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.backends import get_backend
from modelchip.runtime.backends.defaults import announce, default_backend_and_dtype
from modelchip.runtime.batch import build_batch
from modelchip.runtime.kv_cache import KVCache
from modelchip.runtime.loaders.resolve import resolve
from modelchip.runtime.loaders.weights import load_weights
from modelchip.runtime.models.decoder import FAMILIES, DecoderLM
from modelchip.runtime.quant import QuantizedWeight
from modelchip.spec import families

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelchipError(f"unsupported dtype {dtype!r}; choose from float32, bfloat16, float16")
    return DTYPES[dtype]


class LoadedModel:
    """`model` (alias, .gguf, checkpoint dir or hub id) loaded strictly onto `backend` on `device`.

    quantization: None (default) keeps a quantized checkpoint's linear weights packed as stored (GGUF blocks,
    block-scaled FP8, compressed-tensors INT8; docs/runtime.md); "none" dequantizes everything to `dtype` at
    load; naming the checkpoint's own method ("gguf", "fp8", "compressed-tensors") checks that it is that."""

    def __init__(self, model: str, backend: str | None = None, device: str = "cpu",
                 dtype: str | torch.dtype | None = None, allow_pickle: bool = False, block_size: int = 16,
                 quantization: str | None = None):
        if backend is None or dtype is None:  # the fastest for the device (backends/defaults.py), said in one line
            backend, dtype, why = default_backend_and_dtype(device, backend, dtype)
            announce(why)
        self.dtype = torch_dtype(dtype)
        self.ops = get_backend(backend, device)
        self.device = self.ops.device
        found = resolve(model, allow_pickle=allow_pickle, quantization=quantization)
        self.quantization = found.quantization  # the method of the weights kept packed (None: all float)
        model_type = families.text_config(found.config)[1]
        if model_type not in FAMILIES:
            raise ModelchipError(f"the runtime cannot run model_type {model_type!r} (the cost model can); "
                                 f"supported: {', '.join(sorted(FAMILIES))}")
        self.spec = families.read(found.config, str(model))
        self.config = found.config
        self.tokenizer = found.tokenizer
        self.source = found.source
        with torch.inference_mode():
            self.model = DecoderLM(self.ops, self.spec, self.dtype)
            self.dequantized: Counter[str] = Counter()  # quantized tensors unpacked at load, by reason
            self.ignored_tensors = load_weights(self.model, found.tensors, self.dequantized)
            # as loaded, before the backend re-lays linear weights out (a tied LM head is listed once; a
            # quantized weight at its packed size, scales included)
            self.parameter_bytes = {n: p.numel() * p.element_size() for n, p in self.model.named_parameters()}
            self.parameter_bytes |= {f"{n}.{a}".lstrip("."): w.nbytes for n, m in self.model.named_modules()
                                     for a in getattr(m, "LINEAR_WEIGHTS", ())
                                     if isinstance(w := getattr(m, a, None), QuantizedWeight)}
            self.model.prepare_weights()
        self.block_size = block_size
        self.layouts = self.model.cache_layouts()
        self.eos_ids = set(getattr(self.tokenizer, "eos_token_ids", None) or ())
        eos = found.config.get("eos_token_id")
        self.eos_ids |= set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text through the tokenizer, or ids as given), checked against the vocabulary."""
        if isinstance(prompt, str):
            if not prompt:
                raise ModelchipError("empty prompt")
            if self.tokenizer is None:
                raise ModelchipError(f"{self.source} has no tokenizer; pass token ids instead of text")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ModelchipError("empty prompt")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ModelchipError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return ids

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits [len, vocab] (float32) of one full forward over `token_ids`."""
        ids = self.encode_prompt(token_ids)
        blocks = -(-len(ids) // self.block_size)
        cache = KVCache(self.layouts, blocks, self.block_size, self.dtype, self.device)
        x, positions, meta = build_batch([ids], [0], [list(range(blocks))], self.block_size, self.device)
        return self.model.logits(self.model(x, positions, meta, cache.layers))
