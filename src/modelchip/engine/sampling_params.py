"""Per-request sampling parameters: how many tokens, how random, how the logits are shaped, what to report,
when to stop, and what shape the output must have (structured outputs)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelchip.errors import ModelchipError

MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256
MAX_LOGPROBS = 20  # OpenAI's cap on top_logprobs (vLLM's default max_logprobs too)
MAX_N = 16
MAX_LOGIT_BIAS = 300  # entries; OpenAI refuses more than 300
PENALTY_RANGE = (-2.0, 2.0)  # OpenAI's range for presence and frequency penalties
BIAS_RANGE = (-100.0, 100.0)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # a JSON `true` must not pass as 1


@dataclass
class StructuredOutputsParams:
    """A constraint on the output, as vLLM's: exactly one of a JSON schema (`json`, a dict or its JSON text), any
    JSON object (`json_object`), a regular expression, a list of choices, or a Lark grammar (llguidance's
    dialect, which can embed JSON schemas with `%json`). The engine masks the logits so that only tokens keeping
    the output valid can be sampled, and ends the request once the constraint is complete."""

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("json", "json_object", "regex", "choice", "grammar") if getattr(self, k) not in
                 (None, False)]
        if len(given) != 1:
            raise ModelchipError("structured outputs take exactly one of json, json_object, regex, choice or "
                                 f"grammar (got {', '.join(given) or 'none'})")
        if isinstance(self.json, str):
            try:
                self.json = json.loads(self.json)
            except json.JSONDecodeError as exc:
                raise ModelchipError(f"the JSON schema is not valid JSON: {exc}") from None
        if self.json is not None and not isinstance(self.json, dict | bool):
            raise ModelchipError(f"a JSON schema must be an object, got {type(self.json).__name__}")
        if self.choice is not None and (not isinstance(self.choice, list) or not self.choice
                                        or not all(isinstance(c, str) for c in self.choice)):
            raise ModelchipError("choice must be a non-empty list of strings")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ModelchipError(f"{name} must be a non-empty string")


@dataclass
class SamplingParams:
    """What one request asks for, in vLLM's names. temperature 0 is greedy; top_k 0 (or -1) and top_p 1 are off.

    `n` completions of the same prompt. `seed` gives the request its own random stream (completion i of n
    uses seed + i), so its samples do not depend on which other requests share its batches.

    Logits are shaped in this order before sampling (engine/logits_processors.py): the request's own
    `logits_processors` (callables `(output_token_ids, logits[V]) -> logits[V]`; structured output plugs in
    here), `repetition_penalty` (HF/vLLM: over prompt and output tokens, positive logits divided, negative
    multiplied), `frequency_penalty` and `presence_penalty` (OpenAI: over output tokens, minus count * f and
    minus p once present), `logit_bias` (token id -> added value), and while fewer than `min_tokens` are out,
    EOS and `stop_token_ids` masked.

    `logprobs` = k reports, for every generated token, its log-probability and the k most likely tokens';
    `prompt_logprobs` = k the same for every prompt token after the first. Both come from the model's raw
    distribution (before penalties, bias and temperature), as vLLM reports them by default. With
    `prompt_logprobs`, `max_tokens` may be 0: the prompt is scored and nothing is generated.

    `stop` strings end generation and are cut from the text (never streamed); `stop_token_ids` end it like EOS.
    `ignore_eos` keeps generating past end-of-sequence tokens (benchmarks use it for fixed-length outputs).
    `skip_reading_prefix_cache` (vLLM's name) computes the whole prompt even where it is cached: prompt
    log-probabilities need every prompt position's logits, so `prompt_logprobs` implies it.
    `structured_outputs` constrains the text to a JSON schema, a regex, choices or a grammar (each of the n
    completions has its own matcher, engine/structured_output.py).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    skip_reading_prefix_cache: bool = False
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    min_tokens: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logits_processors: list[Callable] = field(default_factory=list)
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logits_processors = list(self.logits_processors or [])
        if self.top_k == -1:  # vLLM and llama.cpp spell "off" as -1
            self.top_k = 0
        if self.prompt_logprobs is not None:  # cached prompt blocks would have no logits to score
            self.skip_reading_prefix_cache = True
        self.validate()

    def validate(self) -> None:
        """Raise a ModelchipError naming the first field out of range."""
        lowest = 0 if self.prompt_logprobs is not None else 1
        if not _is_int(self.max_tokens) or self.max_tokens < lowest:
            raise ModelchipError(f"max_tokens must be a positive integer (0 only with prompt_logprobs), "
                                 f"got {self.max_tokens!r}")
        if not self.temperature >= 0:  # also refuses NaN
            raise ModelchipError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ModelchipError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ModelchipError(f"top_k must be a non-negative integer (0 or -1 = off), got {self.top_k!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ModelchipError(f"seed must be an integer, got {self.seed!r}")
        if not _is_int(self.n) or not 1 <= self.n <= MAX_N:
            raise ModelchipError(f"n must be an integer from 1 to {MAX_N}, got {self.n!r}")
        lo, hi = PENALTY_RANGE
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ModelchipError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ModelchipError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        if self.logit_bias:
            if len(self.logit_bias) > MAX_LOGIT_BIAS:
                raise ModelchipError(f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens, got {len(self.logit_bias)}")
            for token, bias in self.logit_bias.items():
                if not _is_int(token) or token < 0:
                    raise ModelchipError(f"logit_bias keys must be token ids (non-negative integers), got {token!r}")
                if not BIAS_RANGE[0] <= bias <= BIAS_RANGE[1]:
                    raise ModelchipError(f"logit_bias values must be between -100 and 100, got {bias!r} for "
                                         f"token {token}")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise ModelchipError(f"min_tokens must be a non-negative integer, got {self.min_tokens!r}")
        if self.min_tokens > self.max_tokens:
            raise ModelchipError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise ModelchipError(f"stop_token_ids must be token ids (non-negative integers), got "
                                 f"{self.stop_token_ids!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 0 <= value <= MAX_LOGPROBS):
                raise ModelchipError(f"{name} must be an integer from 0 to {MAX_LOGPROBS}, got {value!r}")
        if not all(callable(p) for p in self.logits_processors):
            raise ModelchipError("logits_processors must be callables (output_token_ids, logits) -> logits")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ModelchipError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_LEN:
                raise ModelchipError(f"stop strings must be non-empty strings of at most {MAX_STOP_LEN} characters")
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise ModelchipError("structured_outputs must be a StructuredOutputsParams, got "
                                 f"{type(self.structured_outputs).__name__}")

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids the request names must exist in the model's vocabulary."""
        for name, ids in (("logit_bias", self.logit_bias or {}), ("stop_token_ids", self.stop_token_ids)):
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise ModelchipError(f"{name} names token id {bad[0]}, outside the vocabulary "
                                     f"(0..{vocab_size - 1})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def shapes_logits(self) -> bool:
        """Whether any logits processing applies (a request without it skips that work)."""
        return bool(self.logits_processors or self.presence_penalty or self.frequency_penalty
                    or self.repetition_penalty != 1.0 or self.logit_bias or self.min_tokens)
