"""Turns a scheduled batch into one forward pass through the backend contract, and samples.

Every scheduled sequence contributes its new tokens to one flattened batch; `paged_attention` reads each one's
context through its block table, so prefill chunks and decodes of many sequences share a step on any backend.
Sampling sees the logits as each request shapes them (engine/logits_processors.py); log-probabilities are read
from the raw ones.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch

from modelchip.engine import logits_processors
from modelchip.engine.logprobs import PositionLogprobs, gather
from modelchip.engine.sequence import Sequence
from modelchip.runtime.batch import build_batch
from modelchip.runtime.kv_cache import KVCache


@dataclass
class StepResult:
    """What one step produced. `tokens[i]`: the token sampled for sequence i, or None for a prompt still being
    prefilled in chunks; `logprobs[i]`: that token's log-probabilities when the request asked for them;
    `prompt_logprobs[i]`: those of the prompt tokens this step's chunk predicted (positions in order)."""

    tokens: list[int | None]
    logprobs: list[PositionLogprobs | None]
    prompt_logprobs: dict[int, list[PositionLogprobs]] = field(default_factory=dict)


class ModelRunner:
    def __init__(self, model, ops, cache: KVCache, block_size: int, device: torch.device,
                 eos_ids: set[int] | None = None):
        self.model, self.ops, self.cache = model, ops, cache
        self.eos_ids = set(eos_ids or ())
        self.block_size, self.device = block_size, device
        # unseeded sampling requests share one stream; seeded ones bring their own generator
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(secrets.randbits(63))  # torch.seed() would reseed the caller's global RNG

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], num_new: list[int]) -> StepResult:
        """Run one step: sample a token for every sequence whose tokens are now all computed."""
        # a preempted sequence re-feeds its generated tokens too: they are part of what it lacks in the cache
        new = [s.token_ids[s.num_computed_tokens:s.num_computed_tokens + n] for s, n in zip(seqs, num_new, strict=True)]
        ids, positions, meta = build_batch(new, [s.num_computed_tokens for s in seqs], [s.block_table for s in seqs],
                                           self.block_size, self.device)
        hidden = self.model(ids, positions, meta, self.cache.layers)
        result = StepResult([None] * len(seqs), [None] * len(seqs))
        self._prompt_logprobs(hidden, meta.query_start_loc.tolist(), seqs, num_new, result)
        ends = [s.num_computed_tokens + n == s.num_tokens for s, n in zip(seqs, num_new, strict=True)]
        rows = [i for i, end in enumerate(ends) if end]
        if not rows:
            return result
        last = (meta.query_start_loc[1:] - 1)[rows] if len(rows) < len(seqs) else meta.query_start_loc[1:] - 1
        logits = self.model.logits(hidden[last])
        sampled = [seqs[i] for i in rows]
        picked = self.sample(logits_processors.apply(logits, sampled, self.eos_ids), sampled)
        asked = [j for j, s in enumerate(sampled) if s.params.logprobs is not None]
        if asked:
            chosen = torch.tensor([picked[j] for j in asked], dtype=torch.long)
            found = gather(logits[asked], chosen, [sampled[j].params.logprobs for j in asked])
            for j, entry in zip(asked, found, strict=True):
                result.logprobs[rows[j]] = entry
        for i, tok in zip(rows, picked, strict=True):
            result.tokens[i] = tok
        return result

    def _prompt_logprobs(self, hidden: torch.Tensor, starts: list[int], seqs: list[Sequence], num_new: list[int],
                         result: StepResult) -> None:
        """Score the prompt tokens this step's chunks predict, for the requests that asked. The row at position
        p predicts token p + 1; positions already scored (before a preemption) are not scored again."""
        for i, (seq, n) in enumerate(zip(seqs, num_new, strict=True)):
            k = seq.params.prompt_logprobs
            done = len(seq.prompt_logprobs)  # holds None for the first token, so it is the next position to score
            if k is None or done >= seq.num_prompt_tokens:
                continue
            first = seq.num_computed_tokens
            lo, hi = max(first, done - 1), min(first + n, seq.num_prompt_tokens - 1)
            if lo >= hi:
                continue
            rows = torch.arange(starts[i] + lo - first, starts[i] + hi - first, device=hidden.device)
            chosen = torch.tensor(seq.token_ids[lo + 1:hi + 1], dtype=torch.long)
            result.prompt_logprobs[i] = gather(self.model.logits(hidden[rows]), chosen, [k] * (hi - lo))

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """One `sample` call per random stream: greedy rows together, unseeded rows on the shared generator,
        each seeded request on its own, so a seeded request draws the same numbers whatever its batch."""
        groups: dict[int, list[int]] = {}
        gens: dict[int, torch.Generator | None] = {}
        for i, s in enumerate(seqs):
            gen = None if s.params.greedy else (s.generator or self.generator)
            key = 0 if gen is None else id(gen)
            groups.setdefault(key, []).append(i)
            gens[key] = gen
        picked = [0] * len(seqs)
        dev = self.device
        for key, rows in groups.items():
            ps = [seqs[i].params for i in rows]
            temperature = torch.tensor([p.temperature for p in ps], dtype=torch.float32, device=dev)
            top_p = torch.tensor([p.top_p for p in ps], dtype=torch.float32, device=dev)
            top_k = torch.tensor([p.top_k for p in ps], dtype=torch.long, device=dev)
            part = logits if len(rows) == len(seqs) else logits[rows]
            for i, tok in zip(rows, self.ops.sample(part, temperature, top_p, top_k, gens[key]).tolist(),
                              strict=True):
                picked[i] = int(tok)
        return picked
