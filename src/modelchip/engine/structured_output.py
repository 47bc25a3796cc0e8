"""Structured outputs: a per-request logits processor that masks every token the request's grammar forbids, built
on llguidance (chosen over xgrammar by measurement, BENCHMARKS.md: sub-millisecond grammar compiles, tens of
microseconds per mask at a 49k vocabulary, one small dependency-free wheel, and it reads the `tokenizers` JSON
modelchip already has).

One `StructuredOutputManager` per engine holds the llguidance view of the tokenizer (built once, ~0.2 s); each
constrained request gets a `GrammarLogitsProcessor` with its own matcher. The engine calls the processor on the
request's logits row before sampling, `accept_token` with the sampled token, and ends the request once
`is_finished` (the grammar admits nothing more). End-of-sequence is allowed only where the grammar is complete.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from modelchip.engine.sampling_params import StructuredOutputsParams
from modelchip.errors import ModelchipError

# JSON as json.dumps writes it: no free whitespace, so a small model cannot spin in newlines until max_tokens.
# A schema can loosen this with llguidance's "x-guidance" key (e.g. {"whitespace_flexible": true}).
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_text(params: StructuredOutputsParams) -> str:
    """The llguidance grammar for a constraint (not yet checked against a tokenizer)."""
    import json

    from llguidance import LLMatcher

    try:
        if params.json is not None:
            return LLMatcher.grammar_from_json_schema(params.json, defaults=JSON_DEFAULTS)
        if params.json_object:
            return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_DEFAULTS)
        if params.regex is not None:
            return LLMatcher.grammar_from_regex(params.regex)
        if params.choice is not None:
            return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in params.choice))
        return LLMatcher.grammar_from_lark(params.grammar)
    except ValueError as exc:
        raise ModelchipError(f"invalid structured output constraint: {exc}") from None


class GrammarLogitsProcessor:
    """Masks one request's logits row to the tokens its grammar allows next, and follows the sampled tokens."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        # llguidance writes the mask into host memory: one bit per token, 32 tokens per word, lowest bit first
        self.bitmask = np.empty((vocab_size + 31) // 32, dtype=np.int32)

    def __call__(self, output_token_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
        # unpacked in NumPy (one single-threaded pass): a chain of small torch ops per row costs more in
        # dispatch and thread wake-ups than the mask itself
        forbidden = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[:logits.shape[-1]] == 0
        return logits.masked_fill_(torch.from_numpy(forbidden).to(logits.device), float("-inf"))

    def accept_token(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise ModelchipError(f"the grammar rejected sampled token {token}: {self.matcher.get_error()}")

    @property
    def is_finished(self) -> bool:
        """The grammar is complete and admits no further token (only end-of-sequence)."""
        return self.matcher.is_stopped()


class StructuredOutputManager:
    """The llguidance tokenizer of one model, and grammar matchers over it. Thread-safe: the server checks
    constraints on its own threads while the engine thread builds processors."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: set[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = sorted(eos_token_ids)
        self._ll_tokenizer = None
        self._lock = threading.Lock()

    @property
    def ll_tokenizer(self):
        with self._lock:
            if self._ll_tokenizer is None:
                if self.tokenizer is None:
                    raise ModelchipError("structured outputs need the model's tokenizer, and this model has none")
                if not self.eos_token_ids:
                    raise ModelchipError("structured outputs need an end-of-sequence token, and this model has none")
                try:
                    import llguidance
                except ImportError as exc:
                    raise ModelchipError("structured outputs need llguidance: pip install 'modelchip[serve]'") from exc
                self._ll_tokenizer = llguidance.LLTokenizer(self.tokenizer.backend.to_str(), n_vocab=self.vocab_size,
                                                            eos_token=self.eos_token_ids)
            return self._ll_tokenizer

    def processor(self, params: StructuredOutputsParams) -> GrammarLogitsProcessor:
        """A fresh processor for one request; ModelchipError naming the problem when the constraint is invalid
        (a malformed schema, an unsupported keyword, a bad regex)."""
        from llguidance import LLMatcher

        matcher = LLMatcher(self.ll_tokenizer, grammar_text(params), log_level=0)
        if matcher.is_error():
            raise ModelchipError(f"invalid structured output constraint: {matcher.get_error()}")
        return GrammarLogitsProcessor(matcher, self.vocab_size)

    def check(self, params: StructuredOutputsParams) -> None:
        """Raise ModelchipError when `params` cannot be compiled for this model."""
        self.processor(params)
