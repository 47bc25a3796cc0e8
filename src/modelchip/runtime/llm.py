"""`LLM`: load a model once, then get logits, generate text, or chat. The stable Python API.

    from modelchip import LLM
    llm = LLM("smollm2-135m", backend="reference", device="cpu", dtype="float32")
    llm.logits([1, 2, 3])                         # [3, vocab] float32
    llm.generate(["Hello"], max_tokens=16)        # [Generation(text=..., token_ids=[...])]
    llm.chat([{"role": "user", "content": "What is the capital of France?"}])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.backends import get_backend
from modelchip.runtime.contract import AttentionMetadata
from modelchip.runtime.kv_cache import BlockAllocator, KVCache
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


@dataclass
class _Seq:
    tokens: list[int]
    prompt_len: int
    blocks: list[int] = field(default_factory=list)
    done: bool = False
    finish_reason: str = "length"

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]


class LLM:
    def __init__(self, model: str, backend: str = "reference", device: str = "cpu",
                 dtype: str | torch.dtype = "float32", allow_pickle: bool = False, block_size: int = 16):
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
    def _step(self, seqs: list[_Seq], new_counts: list[int], cache: KVCache) -> torch.Tensor:
        """Run the last `new_counts[i]` tokens of each sequence; return every new token's hidden state."""
        ids, positions, slots, starts, lens = [], [], [], [0], []
        bs = self.block_size
        for seq, n in zip(seqs, new_counts, strict=True):
            total = len(seq.tokens)
            for pos in range(total - n, total):
                ids.append(seq.tokens[pos])
                positions.append(pos)
                slots.append(seq.blocks[pos // bs] * bs + pos % bs)
            starts.append(starts[-1] + n)
            lens.append(total)
        width = max(len(s.blocks) for s in seqs)
        table = [s.blocks + [-1] * (width - len(s.blocks)) for s in seqs]
        dev = self.device
        meta = AttentionMetadata(
            query_start_loc=torch.tensor(starts, device=dev), context_lens=torch.tensor(lens, device=dev),
            block_tables=torch.tensor(table, device=dev), slot_mapping=torch.tensor(slots, device=dev),
            block_size=bs)
        return self.model(torch.tensor(ids, device=dev), torch.tensor(positions, device=dev), meta, cache.layers)

    def _cache_for(self, lengths: list[int]) -> tuple[KVCache, BlockAllocator]:
        blocks = sum(-(-n // self.block_size) for n in lengths)
        return KVCache(self.layouts, blocks, self.block_size, self.dtype, self.device), BlockAllocator(blocks)

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits [len, vocab] (float32) of one full forward over `token_ids`."""
        ids = self._token_ids(token_ids)
        cache, alloc = self._cache_for([len(ids)])
        seq = _Seq(ids, len(ids), alloc.allocate(-(-len(ids) // self.block_size)))
        return self.model.logits(self._step([seq], [len(ids)], cache))

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
        seqs = [_Seq(ids, len(ids)) for ids in map(self._token_ids, prompts)]
        if limit and any(s.prompt_len + max_tokens > limit for s in seqs):
            raise ModelchipError(f"prompt + max_tokens exceeds the model's context of {limit} tokens")
        cache, alloc = self._cache_for([s.prompt_len + max_tokens for s in seqs])
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        n = len(seqs)
        params = (torch.full((n,), float(temperature), device=self.device),
                  torch.full((n,), float(top_p), device=self.device),
                  torch.full((n,), int(top_k), dtype=torch.long, device=self.device))
        new_counts = [s.prompt_len for s in seqs]
        active = list(seqs)
        while active:
            for s in active:
                need = -(-len(s.tokens) // self.block_size) - len(s.blocks)
                if need > 0:
                    s.blocks += alloc.allocate(need)
            hidden = self._step(active, new_counts, cache)
            last = torch.tensor(new_counts, device=self.device).cumsum(0) - 1
            logits = self.model.logits(hidden[last])
            k = len(active)
            picked = self.ops.sample(logits, params[0][:k], params[1][:k], params[2][:k], generator).tolist()
            for s, tok in zip(active, picked, strict=True):
                s.tokens.append(int(tok))
                self._check_stop(s, max_tokens, stop)
            active = [s for s in active if not s.done]
            new_counts = [1] * len(active)
        return [self._result(s, stop) for s in seqs]

    def _check_stop(self, s: _Seq, max_tokens: int, stop: list[str] | None) -> None:
        hit_stop = bool(stop) and any(x in self.tokenizer.decode(s.generated) for x in stop)
        if s.tokens[-1] in self.eos_ids or hit_stop:
            s.done, s.finish_reason = True, "stop"
        elif len(s.generated) >= max_tokens:
            s.done = True

    def _result(self, s: _Seq, stop: list[str] | None) -> Generation:
        ids = s.generated
        text = ""
        if self.tokenizer is not None:
            text = self.tokenizer.decode([t for t in ids if t not in self.eos_ids])
            for x in stop or ():
                if x in text:
                    text = text[: text.index(x)]
        return Generation(text, ids, s.finish_reason, s.tokens[: s.prompt_len])

    def chat(self, messages: list[dict], **kwargs) -> Generation:
        """Apply the model's chat template to `messages` and generate the assistant's reply."""
        if self.tokenizer is None:
            raise ModelchipError(f"{self.source} has no tokenizer or chat template")
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        return self.generate([ids], **kwargs)[0]
