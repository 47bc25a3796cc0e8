"""`LLM`: the Python entry point. A model loaded by the runtime, generating through the serving engine.

    from modelchip import LLM, SamplingParams
    llm = LLM("smollm2-135m")              # the fastest backend and dtype for the device, said on stderr
    llm.logits([1, 2, 3])                                        # [3, vocab] float32
    outputs = llm.generate("Hello", SamplingParams(max_tokens=16, temperature=0))   # as with vLLM
    outputs[0].outputs[0].text, outputs[0].text                  # vLLM's shape, and a shortcut
    llm.chat([{"role": "user", "content": "What is the capital of France?"}])

It sits above the engine (as nano-vllm's LLM does): the runtime loads and runs the model, the engine schedules
requests over it, and this file only puts the two together.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from modelchip.engine import EngineConfig, LLMEngine, SamplingParams
from modelchip.engine.logprobs import Logprob
from modelchip.errors import ModelchipError
from modelchip.runtime.loaded_model import LoadedModel

# what generate() uses when given neither SamplingParams nor keywords: greedy, 64 tokens (vLLM's
# SamplingParams() defaults, temperature 1 and 16 tokens, apply when one is passed)
DEFAULTS = {"max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": None, "stop": None}


@dataclass
class CompletionOutput:
    """One completion of a prompt, as vLLM's `CompletionOutput`: `logprobs` (when SamplingParams.logprobs was
    set) has one dict token id -> Logprob per generated token."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] | None = None


@dataclass
class Generation:
    """What `generate` returns for one prompt, shaped as vLLM's `RequestOutput` (`out.outputs[0].text`,
    `out.prompt`, `out.prompt_token_ids`, `out.finished`), with the one completion's fields on it directly too
    (`out.text`, `out.token_ids`, `out.finish_reason`)."""

    text: str
    token_ids: list[int]
    finish_reason: str = "length"  # "stop" when EOS, a stop token or a stop string ended it
    prompt_token_ids: list[int] = field(default_factory=list)
    prompt: str | None = None  # the prompt's text when it was given as text
    request_id: str = "0"
    finished: bool = True
    completions: list[CompletionOutput] = field(default_factory=list)
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None

    @property
    def outputs(self) -> list[CompletionOutput]:
        """The `SamplingParams.n` completions, in index order."""
        return self.completions or [CompletionOutput(0, self.text, self.token_ids, self.finish_reason)]


class LLM(LoadedModel):
    """A model on this machine for offline generation, called as vLLM's `LLM` is.

    LLM(model, backend=None, device="cpu", dtype=None, allow_pickle=False, block_size=16, enable_prefix_caching=True,
        quantization=None, tensor_parallel_size=1, expert_parallel_size=1, data_parallel_size=1, afd=None,
        afd_micro_batches=2)

    model: an alias (`smollm2-135m`), a `.gguf` file, an HF checkpoint directory, or a hub id.
    backend, dtype: None picks the fastest built-in pair for the device and says which on stderr
      (runtime/backends/defaults.py: on a CPU the `cpu` backend, bfloat16 where the CPU has AVX512-BF16 or AMX).
    backend: `reference` (plain PyTorch on any device; what every other backend is checked against), `cpu`
      (weights packed once for the matmul, fused C++ kernels; the fast path on CPUs), or a plugin's name.
    device: a torch device (`cpu`, `cuda:0`, a plugin's `npu:0`); one this torch cannot use is refused.
    dtype: `float32`, `bfloat16` or `float16` for weights, activations and the KV cache.
    allow_pickle: read PyTorch pickles (`*.bin`) with `torch.load(weights_only=True)`; refused otherwise.
    block_size: tokens per paged KV-cache block.
    enable_prefix_caching: prompts of one `generate` call that start with the same full blocks (a shared system
      prompt) compute them once and share their KV blocks (default True, as in vLLM).
    quantization: None keeps a quantized checkpoint's linear weights packed as stored (GGUF Q8_0/Q4_0/Q4_1/
      Q4_K/Q6_K, block-scaled FP8, compressed-tensors INT8); "none" dequantizes them to `dtype` at load.
    tensor_parallel_size, expert_parallel_size, data_parallel_size: run over several processes (docs/parallel.md):
      attention and MLPs split by tensor parallelism, MoE experts sharded by expert parallelism, attention
      data parallel (DeepSeek's layout, with expert parallelism of the same size); `close()` when done.
    afd: (A, F) runs attention-FFN disaggregation: A attention ranks, F FFN ranks exchanging activations every
      layer, each step split into `afd_micro_batches` micro-batches that pipeline (docs/parallel.md).

    Loading is strict (docs/runtime.md): every checkpoint tensor must have a place in the model and every
    config switch must be one the runtime honours, or the load fails naming it.

    generate(prompts, sampling_params=None) takes a prompt or a list of them (text, token ids, or vLLM's
    `{"prompt": ...}` / `{"prompt_token_ids": [...]}`), with one `SamplingParams` for all or one per prompt,
    or the keywords max_tokens, temperature, top_p, top_k, seed and stop instead. It returns one `Generation`
    per prompt, in order; `outputs` holds its `SamplingParams.n` completions, each with `logprobs` when asked
    for, and `prompt_logprobs` the prompt's (SamplingParams(max_tokens=0, prompt_logprobs=k) scores a prompt).
    `chat(messages, sampling_params=None)` applies the model's chat template first.
    `logits(token_ids)` is one full forward pass.
    """

    def __init__(self, model: str, *args, enable_prefix_caching: bool = True, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.enable_prefix_caching = enable_prefix_caching

    @torch.inference_mode()
    def generate(self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, seed: int | None = None,
                 stop: list[str] | None = None) -> list[Generation]:
        """Continue each prompt, all in one batch; see the class docstring for what prompts and parameters
        may be. Without SamplingParams, `seed` seeds one random stream for the whole call."""
        prompts = _as_list(prompts)
        if not prompts:
            return []
        texts = [p if isinstance(p, str) else p.get("prompt") if isinstance(p, dict) else None for p in prompts]
        prompt_ids = [self.encode_prompt(_prompt_input(p)) for p in prompts]
        keywords = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k,
                    "seed": seed, "stop": stop}
        given = {k: v for k, v in keywords.items() if v is not None}
        if sampling_params is not None and given:
            raise ModelchipError(f"pass sampling parameters either as SamplingParams or as keywords, not both "
                                 f"(got SamplingParams and {', '.join(sorted(given))})")
        generator = None
        if sampling_params is None:
            values = {**DEFAULTS, **given}
            params = [SamplingParams(max_tokens=values["max_tokens"], temperature=float(values["temperature"]),
                                     top_p=float(values["top_p"]), top_k=values["top_k"], stop=values["stop"])]
            # one stream for the whole call, drawn in batch order: `seed` reproduces the call as a whole
            generator = torch.Generator(device=self.device)
            generator.manual_seed(values["seed"] if values["seed"] is not None else secrets.randbits(63))
        elif isinstance(sampling_params, SamplingParams):
            params = [sampling_params]
        else:
            params = list(sampling_params)
            if len(params) != len(prompts) or not all(isinstance(p, SamplingParams) for p in params):
                raise ModelchipError(f"sampling_params must be one SamplingParams or a list of one per prompt "
                                     f"({len(prompts)} prompts, got {len(params)} items)")
        params = params * len(prompts) if len(params) == 1 else params
        for p in params:
            p.validate()
            if p.stop and self.tokenizer is None:
                raise ModelchipError("stop strings need a tokenizer")
        limit = self.spec.max_position_embeddings
        for ids, p in zip(prompt_ids, params, strict=True):
            if limit and len(ids) + p.max_tokens > limit:
                raise ModelchipError(f"prompt ({len(ids)} tokens) + max_tokens ({p.max_tokens}) exceeds the "
                                     f"model's context of {limit} tokens")
        # A cache sized for every request in full and a budget for every prompt in one step: all prompts are
        # prefilled together and nothing is ever preempted, so a batch runs as one static batch would.
        blocks = sum(p.n * -(-(len(ids) + p.max_tokens) // self.block_size)
                     for ids, p in zip(prompt_ids, params, strict=True))
        engine = LLMEngine(self, EngineConfig(num_kv_blocks=max(blocks, 1), max_num_seqs=sum(p.n for p in params),
                                              max_num_batched_tokens=sum(map(len, prompt_ids)),
                                              max_model_len=blocks * self.block_size, watermark=0.0,
                                              enable_prefix_caching=self.enable_prefix_caching))
        for i, (ids, p) in enumerate(zip(prompt_ids, params, strict=True)):
            # a SamplingParams with a seed gets its own stream (the engine makes it), as in vLLM
            engine.add_request(str(i), ids, p, generator=generator)
        finished: dict[str, dict[int, object]] = {str(i): {} for i in range(len(prompts))}
        logprobs: dict[tuple[str, int], list] = {}
        prompt_logprobs: dict[str, list] = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                logprobs.setdefault((out.request_id, out.index), []).extend(out.logprobs or ())
                if out.prompt_logprobs is not None:
                    prompt_logprobs[out.request_id] = out.prompt_logprobs
                if out.finished:
                    finished[out.request_id][out.index] = out
        return [self._result(str(i), ids, texts[i], finished[str(i)], params[i], logprobs,
                             prompt_logprobs.get(str(i))) for i, ids in enumerate(prompt_ids)]

    def _result(self, request_id: str, prompt_ids: list[int], prompt: str | None, outs: dict, params: SamplingParams,
                logprobs: dict, prompt_logprobs: list | None) -> Generation:
        completions = []
        skip = self.eos_ids | set(params.stop_token_ids)
        for index in sorted(outs):
            out = outs[index]
            text = ""
            if self.tokenizer is not None:
                text = self.tokenizer.decode([t for t in out.token_ids if t not in skip])
                for x in params.stop:
                    if x in text:
                        text = text[: text.index(x)]
            lps = logprobs.get((request_id, index)) if params.logprobs is not None else None
            cumulative = sum(e[t].logprob for e, t in zip(lps, out.token_ids, strict=True)) if lps else None
            completions.append(CompletionOutput(index, text, out.token_ids, out.finish_reason, cumulative, lps))
        first = completions[0]
        return Generation(first.text, first.token_ids, first.finish_reason, list(prompt_ids), prompt, request_id,
                          completions=completions, prompt_logprobs=prompt_logprobs)

    def chat(self, messages: list[dict], sampling_params: SamplingParams | None = None, **kwargs) -> Generation:
        """Apply the model's chat template to `messages` and generate the assistant's reply."""
        if self.tokenizer is None:
            raise ModelchipError(f"{self.source} has no tokenizer or chat template")
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        return self.generate([ids], sampling_params, **kwargs)[0]


def _as_list(prompts) -> list:
    """One prompt or a list of them, as vLLM reads it: a string, a token-id list, or a prompt dict is one."""
    if isinstance(prompts, str | dict):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        raise ModelchipError("prompts must be text, token-id lists or prompt dicts, not a tensor (use .tolist())")
    if not isinstance(prompts, Sequence):
        raise ModelchipError(f"prompts must be a string, a token-id list, a prompt dict or a list of these, "
                             f"not {type(prompts).__name__}")
    if prompts and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
        return [list(prompts)]  # one tokenized prompt
    return list(prompts)


def _prompt_input(prompt) -> str | list[int]:
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return prompt["prompt_token_ids"]
        if "prompt" in prompt:
            return prompt["prompt"]
        raise ModelchipError(f"a prompt dict needs 'prompt' or 'prompt_token_ids', got keys {sorted(prompt)}")
    if isinstance(prompt, str) or (isinstance(prompt, Sequence) and not isinstance(prompt, bytes)):
        return prompt
    raise ModelchipError(f"a prompt must be text, a token-id list or a prompt dict, not {type(prompt).__name__}")
