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
from modelchip.engine.step_capture import DecodeCapture
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
    def __init__(self, model, ops, cache: KVCache, block_size: int, device: torch.device, forward=None,
                 eos_ids: set[int] | None = None, capture: DecodeCapture | None = None):
        self.model, self.ops, self.cache = model, ops, cache
        # forward(ids, positions, meta, rows, cache) -> logits of `rows`: LoadedModel.forward_step, which also
        # runs the step on the other ranks of a parallel run; by default the model in this process
        self.forward = forward or self._forward
        self.capture = capture  # padded, backend-captured decode steps (engine/step_capture.py), or None
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
        tables = [s.block_table for s in seqs]
        if self.capture is not None and self.capture.fits(tables) and _pure_decode(seqs, num_new):
            logits = self.capture.run([t[0] for t in new], [s.num_computed_tokens for s in seqs], tables)
            return self._sample_rows(StepResult([None] * len(seqs), [None] * len(seqs)), seqs,
                                     list(range(len(seqs))), logits)
        ids, positions, meta = build_batch(new, [s.num_computed_tokens for s in seqs], tables, self.block_size,
                                           self.device)
        starts = meta.query_start_loc_cpu.tolist()
        result = StepResult([None] * len(seqs), [None] * len(seqs))
        scored = self._prompt_rows(starts, seqs, num_new)
        rows = [i for i, (s, n) in enumerate(zip(seqs, num_new, strict=True))
                if s.num_computed_tokens + n == s.num_tokens]
        # one logits call for the prompt positions asked for and the last row of every sequence that samples
        wanted = [r for _, prows, _, _ in scored for r in prows] + [starts[i + 1] - 1 for i in rows]
        logits = self.forward(ids, positions, meta,
                              torch.tensor(wanted, dtype=torch.long, device=self.device) if wanted else None,
                              self.cache)
        offset = 0
        for i, prows, chosen, k in scored:
            part = logits[offset:offset + len(prows)]
            result.prompt_logprobs[i] = gather(part, chosen, [k] * len(prows))
            offset += len(prows)
        if not rows:
            return result
        return self._sample_rows(result, seqs, rows, logits[offset:])

    def _sample_rows(self, result: StepResult, seqs: list[Sequence], rows: list[int],
                     logits: torch.Tensor) -> StepResult:
        """Sample sequences `rows` from their logits (one row each, in order) into `result`."""
        sampled = [seqs[i] for i in rows]
        shaped = logits
        if any(s.logits_processors for s in sampled):  # per-sequence processors (structured outputs), own row only
            shaped = logits.clone()  # log-probabilities stay those of the raw logits
            for j, s in enumerate(sampled):
                for proc in s.logits_processors:
                    shaped[j] = proc(s.output_token_ids, shaped[j])
        picked = self.sample(logits_processors.apply(shaped, sampled, self.eos_ids), sampled)
        asked = [j for j, s in enumerate(sampled) if s.params.logprobs is not None]
        if asked:
            chosen = torch.tensor([picked[j] for j in asked], dtype=torch.long)
            found = gather(logits[asked], chosen, [sampled[j].params.logprobs for j in asked])
            for j, entry in zip(asked, found, strict=True):
                result.logprobs[rows[j]] = entry
        for i, tok in zip(rows, picked, strict=True):
            result.tokens[i] = tok
        return result

    def _prompt_rows(self, starts: list[int], seqs: list[Sequence],
                     num_new: list[int]) -> list[tuple[int, list[int], torch.Tensor, int]]:
        """(sequence, batch rows, the prompt tokens they predict, k) for the requests that asked for prompt
        log-probabilities. The row at position p predicts token p + 1; positions already scored (before a
        preemption) are not scored again."""
        out = []
        for i, (seq, n) in enumerate(zip(seqs, num_new, strict=True)):
            k = seq.params.prompt_logprobs
            done = len(seq.prompt_logprobs)  # holds None for the first token, so it is the next position to score
            if k is None or done >= seq.num_prompt_tokens:
                continue
            first = seq.num_computed_tokens
            lo, hi = max(first, done - 1), min(first + n, seq.num_prompt_tokens - 1)
            if lo < hi:
                rows = list(range(starts[i] + lo - first, starts[i] + hi - first))
                out.append((i, rows, torch.tensor(seq.token_ids[lo + 1:hi + 1], dtype=torch.long), k))
        return out

    def _forward(self, ids, positions, meta, rows, cache: KVCache) -> torch.Tensor | None:
        hidden = self.model(ids, positions, meta, cache.layers)
        return None if rows is None else self.model.logits(hidden[rows])

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


def _pure_decode(seqs: list[Sequence], num_new: list[int]) -> bool:
    """Every sequence feeds its one missing token and samples the next, and none scores prompt positions:
    a step the padded, fixed-shape decode path (step_capture.py) can run."""
    return all(n == 1 and s.num_computed_tokens + 1 == s.num_tokens and
               (s.params.prompt_logprobs is None or len(s.prompt_logprobs) >= s.num_prompt_tokens)
               for s, n in zip(seqs, num_new, strict=True))
