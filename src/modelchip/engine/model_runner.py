"""Turns a scheduled batch into one forward pass through the backend contract, and samples.

Every scheduled sequence contributes its new tokens to one flattened batch; `paged_attention` reads each one's
context through its block table, so prefill chunks and decodes of many sequences share a step on any backend.
"""

from __future__ import annotations

import secrets

import torch

from modelchip.engine.sequence import Sequence
from modelchip.runtime.batch import build_batch
from modelchip.runtime.kv_cache import KVCache


class ModelRunner:
    def __init__(self, model, ops, cache: KVCache, block_size: int, device: torch.device, forward=None):
        self.model, self.ops, self.cache = model, ops, cache
        # forward(ids, positions, meta, last, cache) -> logits of rows `last`: LoadedModel.forward_step, which
        # also runs the step on the other ranks of a parallel run; by default the model in this process
        self.forward = forward or self._forward
        self.block_size, self.device = block_size, device
        # unseeded sampling requests share one stream; seeded ones bring their own generator
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(secrets.randbits(63))  # torch.seed() would reseed the caller's global RNG

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], num_new: list[int]) -> list[int | None]:
        """Run one step; return the sampled token of every sequence whose tokens are now all computed (None for a
        prompt still being prefilled in chunks)."""
        # a preempted sequence re-feeds its generated tokens too: they are part of what it lacks in the cache
        new = [s.token_ids[s.num_computed_tokens:s.num_computed_tokens + n] for s, n in zip(seqs, num_new, strict=True)]
        ids, positions, meta = build_batch(new, [s.num_computed_tokens for s in seqs], [s.block_table for s in seqs],
                                           self.block_size, self.device)
        ends = [s.num_computed_tokens + n == s.num_tokens for s, n in zip(seqs, num_new, strict=True)]
        rows = [i for i, end in enumerate(ends) if end]
        last = None
        if rows:
            last = (meta.query_start_loc[1:] - 1)[rows] if len(rows) < len(seqs) else meta.query_start_loc[1:] - 1
        logits = self.forward(ids, positions, meta, last, self.cache)
        if not rows:
            return [None] * len(seqs)
        for j, i in enumerate(rows):  # per-request processors (structured outputs) see their own row only
            seq = seqs[i]
            for proc in seq.logits_processors:
                logits[j] = proc(seq.output_token_ids, logits[j])
        picked = self.sample(logits, [seqs[i] for i in rows])
        out: list[int | None] = [None] * len(seqs)
        for i, tok in zip(rows, picked, strict=True):
            out[i] = tok
        return out

    def _forward(self, ids, positions, meta, last, cache: KVCache) -> torch.Tensor | None:
        hidden = self.model(ids, positions, meta, cache.layers)
        return None if last is None else self.model.logits(hidden[last])

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
