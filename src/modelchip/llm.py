"""`LLM`: the Python entry point. A model loaded by the runtime, generating through the serving engine.

    from modelchip import LLM
    llm = LLM("smollm2-135m", backend="reference", device="cpu", dtype="float32")
    llm.logits([1, 2, 3])                         # [3, vocab] float32
    llm.generate(["Hello"], max_tokens=16)        # [Generation(text=..., token_ids=[...])]
    llm.chat([{"role": "user", "content": "What is the capital of France?"}])

It sits above the engine (as nano-vllm's LLM does): the runtime loads and runs the model, the engine schedules
requests over it, and this file only puts the two together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modelchip.engine import EngineConfig, LLMEngine, SamplingParams
from modelchip.errors import ModelchipError
from modelchip.runtime.loaded_model import LoadedModel


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str = "length"  # "stop" when EOS or a stop string ended it
    prompt_token_ids: list[int] = field(default_factory=list)


class LLM(LoadedModel):
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
        prompt_ids = [self.encode_prompt(p) for p in prompts]
        if limit and any(len(ids) + max_tokens > limit for ids in prompt_ids):
            raise ModelchipError(f"prompt + max_tokens exceeds the model's context of {limit} tokens")
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
