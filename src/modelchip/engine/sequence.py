"""One sequence's state as the engine sees it: its tokens, how many are in the KV cache, its blocks. A request
with n completions is n sequences (`index` 0..n-1) sharing its `request_id`."""

from __future__ import annotations

import enum
import time
from typing import Protocol

import torch

from modelchip.engine.detokenizer import IncrementalDetokenizer
from modelchip.engine.logprobs import PositionLogprobs
from modelchip.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class RequestLogitsProcessor(Protocol):
    """A per-request step before sampling: takes the request's output token ids so far and its logits row,
    returns the row (in place is fine). It may also define `accept_token(token)`, called with every sampled
    token, and `is_finished`, which ends the request with finish_reason "stop" once true (a grammar that is
    complete)."""

    def __call__(self, output_token_ids: list[int], logits: torch.Tensor) -> torch.Tensor: ...


class Sequence:
    """Prompt plus generated tokens. `num_computed_tokens` of them have K/V in the cache; the scheduler feeds
    the rest (a prefill chunk, or the one token sampled last step). Preemption by recompute drops the blocks
    and sets it back to 0, keeping the generated tokens, so the request continues where it stopped."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 generator: torch.Generator | None = None, detokenizer: IncrementalDetokenizer | None = None,
                 arrival_time: float | None = None, index: int = 0, seq_id: str | None = None):
        self.request_id = request_id
        self.index = index
        self.seq_id = request_id if seq_id is None else seq_id  # the engine's key for this one sequence
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.params = params
        self.generator = generator
        self.detokenizer = detokenizer
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # prefix-cache hashes of its full blocks, filled as they are needed
        self.finish_reason: str | None = None
        self.num_preemptions = 0
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        # log-probabilities when asked for: one entry per prompt token (None for the first, which nothing
        # predicts), and one per generated token
        self.prompt_logprobs: list[PositionLogprobs | None] = [None]
        self.output_logprobs: list[PositionLogprobs] = []
        self.prompt_logprobs_sent = False
        self.logits_processors: list[RequestLogitsProcessor] = []

    def __repr__(self) -> str:
        return (f"Sequence({self.seq_id!r}, {self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
