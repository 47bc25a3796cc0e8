"""`LLM`: load a model once, then get logits, generate text, or chat. The stable Python API.

    from modelchip import LLM
    llm = LLM("smollm2-135m")                     # the fastest backend and dtype for the device, said on stderr
    llm.logits([1, 2, 3])                         # [3, vocab] float32
    llm.generate(["Hello"], max_tokens=16)        # [Generation(text=..., token_ids=[...])]
    llm.chat([{"role": "user", "content": "What is the capital of France?"}])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.backends import get_backend
from modelchip.runtime.backends.defaults import announce, default_backend_and_dtype
from modelchip.runtime.kv_cache import KVCache
from modelchip.runtime.loaders.resolve import resolve
from modelchip.runtime.loaders.weights import load_weights
from modelchip.runtime.models.decoder import FAMILIES, DecoderLM
from modelchip.spec import families

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelchipError(f"unsupported dtype {dtype!r}; choose from float32, bfloat16, float16")
    return DTYPES[dtype]


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str = "length"  # "stop" when EOS or a stop string ended it
    prompt_token_ids: list[int] = field(default_factory=list)


class LLM:
    def __init__(self, model: str, backend: str | None = None, device: str = "cpu",
                 dtype: str | torch.dtype | None = None, allow_pickle: bool = False, block_size: int = 16):
        if backend is None or dtype is None:  # the fastest for the device (backends/defaults.py), said in one line
            backend, dtype, why = default_backend_and_dtype(device, backend, dtype)
            announce(why)
        self.dtype = torch_dtype(dtype)
        self.ops = get_backend(backend, device)
        self.device = self.ops.device
        found = resolve(model, allow_pickle=allow_pickle)
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
            self.ignored_tensors = load_weights(self.model, found.tensors)
            # as loaded, before the backend re-lays linear weights out (a tied LM head is listed once)
            self.parameter_bytes = {n: p.numel() * p.element_size() for n, p in self.model.named_parameters()}
            self.model.prepare_weights()
        self.block_size = block_size
        self.layouts = self.model.cache_layouts()
        self.eos_ids = set(getattr(self.tokenizer, "eos_token_ids", None) or ())
        eos = found.config.get("eos_token_id")
        self.eos_ids |= set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    # -- input checks -----------------------------------------------------------------------------------
    def _token_ids(self, prompt) -> list[int]:
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

    # -- forward passes ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits [len, vocab] (float32) of one full forward over `token_ids`."""
        from modelchip.engine.model_runner import build_batch

        ids = self._token_ids(token_ids)
        blocks = -(-len(ids) // self.block_size)
        cache = KVCache(self.layouts, blocks, self.block_size, self.dtype, self.device)
        x, positions, meta = build_batch([ids], [0], [list(range(blocks))], self.block_size, self.device)
        return self.model.logits(self.model(x, positions, meta, cache.layers))

    @torch.inference_mode()
    def generate(self, prompts: list, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, stop: list[str] | None = None) -> list[Generation]:
        """Continue each prompt (text or token ids) by up to `max_tokens` new tokens, batched together."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise ModelchipError("prompts must be a list of prompts (texts or token-id lists)")
        if not prompts:
            return []
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ModelchipError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ModelchipError("need temperature >= 0, 0 < top_p <= 1 and top_k >= 0")
        if stop and self.tokenizer is None:
            raise ModelchipError("stop strings need a tokenizer")
        limit = self.spec.max_position_embeddings
        prompt_ids = [self._token_ids(p) for p in prompts]
        if limit and any(len(ids) + max_tokens > limit for ids in prompt_ids):
            raise ModelchipError(f"prompt + max_tokens exceeds the model's context of {limit} tokens")
        from modelchip.engine import EngineConfig, LLMEngine, SamplingParams

        # A cache sized for every request in full and a budget for every prompt in one step: all prompts are
        # prefilled together and nothing is ever preempted, so a batch runs as one static batch would.
        blocks = sum(-(-(len(ids) + max_tokens) // self.block_size) for ids in prompt_ids)
        engine = LLMEngine(self, EngineConfig(num_kv_blocks=blocks, max_num_seqs=len(prompt_ids),
                                              max_num_batched_tokens=sum(map(len, prompt_ids)),
                                              max_model_len=blocks * self.block_size, watermark=0.0))
        # one stream for the whole call, drawn in batch order: `seed` reproduces the call as a whole
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        params = SamplingParams(max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p),
                                top_k=int(top_k), stop=list(stop or []))
        for i, ids in enumerate(prompt_ids):
            engine.add_request(str(i), ids, params, generator=generator)
        finished = {}
        while engine.has_unfinished_requests():
            finished.update((out.request_id, out) for out in engine.step() if out.finished)
        return [self._result(ids, finished[str(i)], stop) for i, ids in enumerate(prompt_ids)]

    def _result(self, prompt_ids: list[int], out, stop: list[str] | None) -> Generation:
        ids = out.token_ids
        text = ""
        if self.tokenizer is not None:
            text = self.tokenizer.decode([t for t in ids if t not in self.eos_ids])
            for x in stop or ():
                if x in text:
                    text = text[: text.index(x)]
        return Generation(text, ids, out.finish_reason, list(prompt_ids))

    def chat(self, messages: list[dict], **kwargs) -> Generation:
        """Apply the model's chat template to `messages` and generate the assistant's reply."""
        if self.tokenizer is None:
            raise ModelchipError(f"{self.source} has no tokenizer or chat template")
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        return self.generate([ids], **kwargs)[0]
