"""The engine's log-probabilities (vLLM's per-position dicts token id -> Logprob) in OpenAI's two response
shapes: chat's `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}` and the legacy completions'
`{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`. A token the model rules out (-inf) is reported
as -9999.0, as vLLM does, since JSON has no infinity."""

from __future__ import annotations

import math
from collections.abc import Callable

from modelchip.engine.logprobs import Logprob

FLOOR = -9999.0


def _value(lp: Logprob) -> float:
    return lp.logprob if math.isfinite(lp.logprob) else FLOOR


def _text(lp: Logprob, token: int) -> str:
    return lp.decoded_token if lp.decoded_token is not None else f"token_id:{token}"


def _top(entry: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    return sorted(((t, lp) for t, lp in entry.items() if lp.rank <= k), key=lambda x: x[1].rank)[:k]


def chat_content(tokens: list[int], entries: list[dict[int, Logprob]], k: int) -> list[dict]:
    """Chat `logprobs.content` items for `tokens` (one entry each), with the `k` most likely alternatives."""
    out = []
    for token, entry in zip(tokens, entries, strict=True):
        lp = entry[token]
        text = _text(lp, token)
        out.append({"token": text, "logprob": _value(lp), "bytes": list(text.encode("utf-8")),
                    "top_logprobs": [{"token": _text(t_lp, t), "logprob": _value(t_lp),
                                      "bytes": list(_text(t_lp, t).encode("utf-8"))} for t, t_lp in _top(entry, k)]})
    return out


class CompletionLogprobs:
    """Builds the legacy completions `logprobs` object, chunk by chunk when streaming; `text_offset` counts
    characters from the start of the choice's text (the prompt's, with echo). `decode` names a token that has
    no log-probability (an echoed prompt's first: nothing predicts it)."""

    def __init__(self, k: int, decode: Callable[[int], str]):
        self.k, self.decode = k, decode
        self.offset = 0

    def part(self, tokens: list[int], entries: list[dict[int, Logprob] | None]) -> dict:
        part: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, entry in zip(tokens, entries, strict=True):
            lp = entry[token] if entry is not None else None
            text = _text(lp, token) if lp is not None else self.decode(token)
            part["tokens"].append(text)
            part["token_logprobs"].append(None if lp is None else _value(lp))
            part["top_logprobs"].append(None if entry is None else
                                        {_text(t_lp, t): _value(t_lp) for t, t_lp in _top(entry, self.k)})
            part["text_offset"].append(self.offset)
            self.offset += len(text)
        return part


def merge(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {key: a[key] + b[key] for key in a}
