"""Per-request sampling parameters: how many tokens, how random, when to stop, and what shape the output must
have (structured outputs)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from modelchip.errors import ModelchipError

MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256


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
    """What one request asks for. temperature 0 is greedy; top_k 0 (or -1) and top_p 1 are off.

    `seed` gives the request its own random stream, so its samples do not depend on which other requests share
    its batches. `stop` strings end generation and are cut from the text (never streamed). `ignore_eos` keeps
    generating past end-of-sequence tokens (benchmarks use it for fixed-length outputs).
    `skip_reading_prefix_cache` (vLLM's name) computes the whole prompt even where it is cached: what needs
    every prompt position's logits, such as prompt log-probabilities, sets it. `structured_outputs`
    constrains the text to a JSON schema, a regex, choices or a grammar.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    skip_reading_prefix_cache: bool = False
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        if self.top_k == -1:  # vLLM and llama.cpp spell "off" as -1
            self.top_k = 0
        self.validate()

    def validate(self) -> None:
        # bool is an int subclass; a JSON `true` must not pass as max_tokens=1
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ModelchipError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not self.temperature >= 0:  # also refuses NaN
            raise ModelchipError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ModelchipError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ModelchipError(f"top_k must be a non-negative integer (0 or -1 = off), got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ModelchipError(f"seed must be an integer, got {self.seed!r}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ModelchipError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_LEN:
                raise ModelchipError(f"stop strings must be non-empty strings of at most {MAX_STOP_LEN} characters")
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise ModelchipError("structured_outputs must be a StructuredOutputsParams, got "
                                 f"{type(self.structured_outputs).__name__}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
