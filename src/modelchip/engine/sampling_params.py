"""Per-request sampling parameters: how many tokens, how random, when to stop."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelchip.errors import ModelchipError

MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256


@dataclass
class SamplingParams:
    """What one request asks for. temperature 0 is greedy; top_k 0 (or -1) and top_p 1 are off.

    `seed` gives the request its own random stream, so its samples do not depend on which other requests share
    its batches. `stop` strings end generation and are cut from the text (never streamed). `ignore_eos` keeps
    generating past end-of-sequence tokens (benchmarks use it for fixed-length outputs).
    `skip_reading_prefix_cache` (vLLM's name) computes the whole prompt even where it is cached: what needs
    every prompt position's logits, such as prompt log-probabilities, sets it.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    skip_reading_prefix_cache: bool = False

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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
