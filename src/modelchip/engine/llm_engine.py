"""`LLMEngine`: requests in, token and text deltas out, one scheduler step at a time.

    engine = LLMEngine(LLM("smollm2-135m"))         # or any runtime LoadedModel
    engine.add_request("a", "Once upon a time", SamplingParams(max_tokens=32, temperature=0))
    while engine.has_unfinished_requests():
        for out in engine.step():
            print(out.request_id, out.new_text, out.finished)

The engine is not thread-safe: one thread drives it (`AsyncEngine` does that for the server).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from modelchip.engine import step_capture
from modelchip.engine.block_manager import BlockManager
from modelchip.engine.detokenizer import IncrementalDetokenizer
from modelchip.engine.logprobs import PositionLogprobs
from modelchip.engine.metrics import EngineStats
from modelchip.engine.model_runner import ModelRunner
from modelchip.engine.sampling_params import SamplingParams
from modelchip.engine.scheduler import Scheduler, SchedulerConfig
from modelchip.engine.sequence import Sequence, SequenceStatus
from modelchip.engine.structured_output import StructuredOutputManager
from modelchip.errors import ModelchipError
from modelchip.runtime.loaded_model import LoadedModel

SEED_MASK = (1 << 64) - 1


@dataclass
class EngineConfig:
    """Sizes of the engine. The KV cache holds `num_kv_blocks` blocks of `block_size` tokens (default:
    enough for `kv_cache_tokens`); one request may use at most `max_model_len` tokens (default: the model's
    context, capped by the cache). Each step runs at most `max_num_seqs` sequences and
    `max_num_batched_tokens` new tokens (long prompts are prefilled in chunks of what is left)."""

    block_size: int | None = None  # default: the LLM's
    num_kv_blocks: int | None = None
    kv_cache_tokens: int = 32768
    max_model_len: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    watermark: float = 0.01  # fraction of blocks kept free when admitting a new request
    enable_prefix_caching: bool = True  # share the K/V of full blocks whose whole prefix matches (block_manager.py)


@dataclass
class RequestOutput:
    """What one step produced for one completion (`index` of the request's n). `new_text` is safe to stream:
    whole characters, and nothing that might still turn out to be the start of a stop string. When `finished`,
    `text` and `token_ids` hold the whole output (token ids include an end-of-sequence or stop token; the text
    never does); `request_finished` says the request's last completion is done.

    `logprobs` has one entry per token in `new_token_ids` (vLLM's dict token id -> Logprob) when the request
    asked for them; `prompt_logprobs` (one per prompt token, None first) comes on each completion's first output.
    """

    request_id: str
    new_token_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    text: str | None = None
    token_ids: list[int] | None = None
    error: str | None = None
    index: int = 0
    request_finished: bool | None = None  # None: same as `finished` (a one-completion request)
    logprobs: list[PositionLogprobs] | None = None
    prompt_logprobs: list[PositionLogprobs | None] | None = None

    def __post_init__(self) -> None:
        if self.request_finished is None:
            self.request_finished = self.finished


class LLMEngine:
    """Requests over one `LoadedModel` (an `LLM` is one too)."""

    def __init__(self, llm: LoadedModel, config: EngineConfig | None = None):
        self.llm = llm
        self.config = config = config or EngineConfig()
        self.block_size = bs = config.block_size or llm.block_size
        num_blocks = config.num_kv_blocks or -(-config.kv_cache_tokens // bs)
        if num_blocks < 1 or config.max_num_seqs < 1 or config.max_num_batched_tokens < 1:
            raise ModelchipError("the engine needs at least one KV block, one sequence and one token per step")
        context = llm.spec.max_position_embeddings or num_blocks * bs
        self.max_model_len = min(context, num_blocks * bs, config.max_model_len or context)
        capture = step_capture.enabled(llm.ops, getattr(llm, "parallel", None))
        # under tensor parallelism every rank makes its shard; a capturing backend gets one scratch block more
        # than the block manager hands out, for the rows that pad a decode step to a captured size
        self.cache = llm.make_cache(num_blocks + capture, bs)
        self.block_manager = BlockManager(num_blocks, bs, config.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                                   int(config.watermark * num_blocks)), self.block_manager)
        self.runner = ModelRunner(llm.model, llm.ops, self.cache, bs, llm.device, llm.forward_step, llm.eos_ids)
        if capture:
            self.runner.capture = step_capture.DecodeCapture(llm.ops, llm.forward_step, self.cache, bs, num_blocks,
                                                             -(-self.max_model_len // bs), config.max_num_seqs,
                                                             llm.device)
        self.requests: dict[str, Sequence] = {}  # unfinished sequences by seq_id (the request id when n = 1)
        self.groups: dict[str, list[Sequence]] = {}  # request id -> its unfinished sequences
        # completions 1..n-1 of a request wait here until completion 0 has computed the prompt; admitted then,
        # their prompt's full blocks are cached and shared (prefix caching) rather than computed n times
        self.deferred: dict[str, list[Sequence]] = {}
        self.stats = EngineStats()
        self.structured_output = StructuredOutputManager(llm.tokenizer, llm.vocab_size, llm.eos_ids)

    # -- requests -------------------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    generator: torch.Generator | None = None, arrival_time: float | None = None) -> Sequence:
        """Queue a request (text or token ids) for `params.n` completions; returns the first one's sequence.
        A seeded request gets its own generator per completion (seed + index) unless one is given; requests
        given the same generator draw from one stream in batch order (what `LLM.generate` does)."""
        if request_id in self.groups or request_id in self.requests:
            raise ModelchipError(f"request id {request_id!r} is already in use")
        params.validate()
        params.check_vocab(self.llm.vocab_size)
        ids = self.llm.encode_prompt(prompt)
        if len(ids) + params.max_tokens > self.max_model_len:
            raise ModelchipError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                                 f"context of {self.max_model_len} tokens")
        tokenizer = self.llm.tokenizer
        if params.stop and tokenizer is None:
            raise ModelchipError("stop strings need a tokenizer")
        arrival_time = time.monotonic() if arrival_time is None else arrival_time
        skip = self.llm.eos_ids | set(params.stop_token_ids)
        seqs = []
        for i in range(params.n):
            gen = generator
            if gen is None and params.seed is not None and not params.greedy:
                gen = torch.Generator(device=self.llm.device)
                gen.manual_seed((params.seed + i) & SEED_MASK)
            detok = IncrementalDetokenizer(tokenizer, params.stop, skip) if tokenizer is not None else None
            seq_id = request_id if params.n == 1 else f"{request_id}#{i}"
            seq = Sequence(request_id, ids, params, gen, detok, arrival_time, index=i, seq_id=seq_id)
            # a grammar matcher holds its state per sequence: each of the n completions gets its own
            if params.structured_outputs is not None:
                seq.logits_processors = [self.structured_output.processor(params.structured_outputs)]
            seqs.append(seq)
        for seq in seqs:
            self.requests[seq.seq_id] = seq
        self.groups[request_id] = seqs
        self.scheduler.add(seqs[0])
        if len(seqs) > 1:
            self.deferred[request_id] = seqs[1:]
        self.stats.requests_added += 1
        return seqs[0]

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Drop a request (all its completions) now and give its KV blocks back; returns the output that ends
        it, or None when it is unknown or already finished."""
        self._drop_deferred(request_id)
        last = None
        for seq in list(self.groups.get(request_id, ())):
            last = self._finish(seq, "abort")
        return last

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # -- stepping -------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run one forward pass, sample, and report every completion that got a token or finished."""
        batch = self.scheduler.schedule()
        self.stats.preemptions = self.scheduler.num_preemptions
        if not batch:
            return []
        result = self.runner.run(batch.seqs, batch.num_new_tokens)
        self.stats.steps += 1
        now = time.monotonic()
        outputs = []
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            seq.num_computed_tokens += n
            if i in result.prompt_logprobs:
                seq.prompt_logprobs += self._decoded(result.prompt_logprobs[i])
            token = result.tokens[i]
            if token is None:
                continue
            if seq.num_output_tokens == 0:
                self._release_siblings(seq)
            if seq.params.max_tokens == 0:  # a prompt to score, nothing to generate
                self._first_token_stats(seq, now)
                outputs.append(self._finish(seq, "length"))
            else:
                outputs.append(self._append(seq, token, result.logprobs[i], now))
        return outputs

    def _drop_deferred(self, request_id: str) -> None:
        for seq in self.deferred.pop(request_id, ()):
            seq.status = SequenceStatus.FINISHED  # in no scheduler queue: nothing to take it out of

    def _release_siblings(self, seq: Sequence) -> None:
        """The prompt's K/V are computed: the request's other completions may start (and share its blocks)."""
        siblings = self.deferred.pop(seq.request_id, None) if seq.index == 0 else None
        for sibling in siblings or ():
            sibling.prompt_logprobs = seq.prompt_logprobs  # scored once, for all completions
            self.scheduler.add(sibling)

    def _decoded(self, entries: list[PositionLogprobs]) -> list[PositionLogprobs]:
        tokenizer = self.llm.tokenizer
        for entry in entries:
            for token, lp in entry.items():
                lp.decoded_token = (tokenizer.decode([token], skip_special_tokens=False) if tokenizer is not None
                                    else f"token_id:{token}")
        return entries

    def _first_token_stats(self, seq: Sequence, now: float) -> None:
        stats = self.stats
        if seq.first_token_time is None:
            seq.first_token_time = now
            stats.prompt_tokens += seq.num_prompt_tokens
            stats.ttft.observe(now - seq.arrival_time)
        else:
            stats.tpot.observe(now - seq.last_token_time)
        seq.last_token_time = now

    def _append(self, seq: Sequence, token: int, logprobs: PositionLogprobs | None, now: float) -> RequestOutput:
        seq.token_ids.append(token)
        new_logprobs = None
        if logprobs is not None:
            new_logprobs = self._decoded([logprobs])
            seq.output_logprobs += new_logprobs
        self.stats.generation_tokens += 1
        self._first_token_stats(seq, now)
        detok = seq.detokenizer
        if detok is not None:
            detok.add(token)
        params = seq.params
        grammar_done = False
        for proc in seq.logits_processors:
            accept = getattr(proc, "accept_token", None)
            if accept is not None:
                try:
                    accept(token)
                except ModelchipError as exc:
                    out = self._finish(seq, "error", [token], new_logprobs)
                    out.error = str(exc)
                    return out
            grammar_done = grammar_done or getattr(proc, "is_finished", False)
        if ((token in self.llm.eos_ids and not params.ignore_eos) or token in params.stop_token_ids
                or (detok is not None and detok.stopped) or grammar_done):
            return self._finish(seq, "stop", [token], new_logprobs)
        if seq.num_output_tokens >= params.max_tokens:
            return self._finish(seq, "length", [token], new_logprobs)
        return RequestOutput(seq.request_id, [token], detok.delta() if detok else "", False, None,
                             seq.num_prompt_tokens, seq.num_output_tokens, index=seq.index, logprobs=new_logprobs,
                             prompt_logprobs=self._prompt_part(seq))

    @staticmethod
    def _prompt_part(seq: Sequence) -> list[PositionLogprobs | None] | None:
        """The prompt's log-probabilities, on the first output of each completion that asked for them."""
        if seq.params.prompt_logprobs is None or seq.prompt_logprobs_sent:
            return None
        seq.prompt_logprobs_sent = True
        return seq.prompt_logprobs

    def _finish(self, seq: Sequence, reason: str, new_tokens: list[int] | None = None,
                new_logprobs: list[PositionLogprobs] | None = None) -> RequestOutput:
        self.scheduler.remove(seq)  # blocks go back before anything else can be scheduled
        del self.requests[seq.seq_id]
        group = self.groups[seq.request_id]
        group.remove(seq)
        if not group:
            del self.groups[seq.request_id]
        seq.finish_reason = reason
        self.stats.finished[reason] += 1
        if reason in ("stop", "length"):  # a request that ran to its end, not one cut short
            self.stats.e2e.observe(time.monotonic() - seq.arrival_time)
        detok = seq.detokenizer
        if detok is not None:
            detok.finish()
        return RequestOutput(seq.request_id, new_tokens or [], detok.delta(final=True) if detok else "", True,
                             reason, seq.num_prompt_tokens, seq.num_output_tokens,
                             detok.text if detok else "", seq.output_token_ids, index=seq.index,
                             request_finished=seq.request_id not in self.groups, logprobs=new_logprobs,
                             prompt_logprobs=self._prompt_part(seq))

    def fail_all(self, message: str) -> list[RequestOutput]:
        """Finish every request with an error (after a failed step), freeing all blocks and forgetting the
        prefix cache (the failed step may have left blocks cached for it half written)."""
        outs = []
        for request_id in list(self.deferred):
            self._drop_deferred(request_id)
        for seq in list(self.requests.values()):
            out = self._finish(seq, "error")
            out.error = message
            outs.append(out)
        self.block_manager.reset_prefix_cache()
        return outs
