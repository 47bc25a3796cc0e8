"""Incremental detokenization for streaming: text deltas that never split a UTF-8 character and never leak a
stop string.

Decoding a growing token list from scratch every step costs O(n) per token; instead each step decodes a short
window (the tokens since the last emitted boundary) twice, with and without the new tokens, and emits the
difference. Decoding a window rather than single tokens keeps decoders that look at neighbours (SentencePiece's
leading-space rule, byte fallback) right. A window whose text ends in U+FFFD is an incomplete UTF-8 sequence:
wait for the next token.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: list[str] | None = None, skip_ids: set[int] | None = None):
        self.tokenizer = tokenizer
        self.stop = list(stop or [])
        self.skip_ids = skip_ids or set()
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: the last boundary before read_offset
        self.read_offset = 0  # tokens up to here are already in `text`
        self.text = ""  # decoded output so far (cut at a stop string once one is found)
        self.emitted = 0  # characters of `text` already handed out as deltas
        self.stopped = False

    def add(self, token_id: int) -> None:
        """Append one generated token; sets `stopped` when the text now contains a stop string."""
        if self.stopped or token_id in self.skip_ids:
            return
        self.ids.append(int(token_id))
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT):
            return
        self._append(full[len(prefix):])
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def finish(self) -> None:
        """Flush what the window still holds back (a trailing incomplete character decodes as U+FFFD)."""
        if self.stopped or self.read_offset == len(self.ids):
            return
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix):
            self._append(full[len(prefix):])
        self.read_offset = len(self.ids)

    def _append(self, delta: str) -> None:
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += delta
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def _held_back(self) -> int:
        """Characters at the end of the text that could still become the start of a stop string."""
        if self.stopped:
            return 0
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def delta(self, final: bool = False) -> str:
        """New text safe to stream now; with `final`, everything that is left."""
        end = len(self.text) if final else len(self.text) - self._held_back()
        out = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out
