"""Whole-step capture of decode steps (contract v2's `capture_step`, vLLM's cudagraph capture sizes).

A backend that captures (CUDA graphs, ACL graphs) replays a recorded step instead of launching every op, which
needs fixed shapes and fixed input tensors. So a pure decode step of n sequences is padded to the next capture
size B >= n, its inputs are written in place into tensors kept per size, and the backend is handed `step()` for
that size once; later steps of that size call what it returned. Padding rows are one-token decodes of a scratch
block the block manager never hands out (the engine allocates one block more than it manages), so they write and
read only that block; their logits are dropped. Backends without the hook never get here (`enabled`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from modelchip.runtime.contract import AttentionMetadata

# vLLM's default cudagraph capture sizes, up to the engine's max_num_seqs
CAPTURE_SIZES = (1, 2, 4, 8, *range(16, 513, 8))


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Padded decode batch sizes for at most `max_num_seqs` sequences: vLLM's list, cut after the first size
    that holds them all."""
    sizes = [b for b in CAPTURE_SIZES if b < max_num_seqs]
    return sizes + [next((b for b in CAPTURE_SIZES if b >= max_num_seqs), max_num_seqs)]


def enabled(ops, parallel) -> bool:
    """Capture only for a backend with its own `capture_step`, in one process (a recorded step cannot hold
    the broadcast that drives the other ranks of a parallel run)."""
    return parallel is None and getattr(ops, "captures_steps", False)


class _Buffers:
    """The fixed inputs of one padded size, rewritten in place before every step of that size."""

    def __init__(self, size: int, width: int, block_size: int, pad_block: int, device: torch.device):
        # until the first step's inputs arrive, every row is padding: a warm-up or recording run then writes
        # and reads the scratch block only
        self.ids = torch.zeros(size, dtype=torch.long, device=device)
        self.positions = torch.zeros(size, dtype=torch.long, device=device)
        self.rows = torch.arange(size, device=device)
        self.meta = AttentionMetadata(
            query_start_loc=torch.arange(size + 1, device=device), context_lens=torch.ones(size, dtype=torch.long,
                                                                                           device=device),
            block_tables=torch.full((size, width), -1, dtype=torch.long, device=device).index_fill_(1, torch.tensor(
                [0], device=device), pad_block),
            slot_mapping=torch.full((size,), pad_block * block_size, dtype=torch.long, device=device),
            block_size=block_size,
            query_start_loc_cpu=torch.arange(size + 1), context_lens_cpu=torch.ones(size, dtype=torch.long),
            max_query_len=1, max_context_len=1, num_prefills=0, num_decodes=size)


class DecodeCapture:
    """Padded, captured decode steps for one engine. `forward(ids, positions, meta, rows, cache)` is the
    model runner's forward; `pad_block` the scratch block; `width` the block table width (max_model_len's
    blocks)."""

    def __init__(self, ops, forward: Callable, cache, block_size: int, pad_block: int, width: int,
                 max_num_seqs: int, device: torch.device):
        self.ops, self.forward, self.cache = ops, forward, cache
        self.block_size, self.pad_block, self.width, self.device = block_size, pad_block, width, device
        self.sizes = capture_sizes(max_num_seqs)
        self.steps: dict[int, tuple[_Buffers, Callable[[], torch.Tensor]]] = {}
        self.captured: set[int] = set()  # sizes the backend captured (the others run eagerly, padded alike)

    def fits(self, tables: list[list[int]]) -> bool:
        """A decode step of sequences with these block tables has a padded size and fits the fixed tables."""
        return len(tables) <= self.sizes[-1] and all(len(t) <= self.width for t in tables)

    def run(self, tokens: list[int], positions: list[int], tables: list[list[int]]) -> torch.Tensor:
        """Logits [n, vocab] of one decode step of n sequences: `tokens[i]` at `positions[i]`, blocks
        `tables[i]`."""
        n = len(tokens)
        size = next(b for b in self.sizes if b >= n)
        if size not in self.steps:
            self.steps[size] = self._capture(size)
        buf, step = self.steps[size]
        pad = size - n
        bs = self.block_size
        slots = [t[p // bs] * bs + p % bs for t, p in zip(tables, positions, strict=True)]
        lens = [p + 1 for p in positions] + [1] * pad
        table = [t + [-1] * (self.width - len(t)) for t in tables] + [[self.pad_block] + [-1] * (self.width - 1)] * pad
        # a new metadata object over the same device tensors (see `_capture`), with this step's host side; then
        # the inputs, written in place into the tensors a recorded step reads
        meta = buf.meta = dataclasses.replace(buf.meta, context_lens_cpu=torch.tensor(lens),
                                              max_context_len=max(lens))
        buf.ids.copy_(torch.tensor(tokens + [0] * pad))
        buf.positions.copy_(torch.tensor(positions + [0] * pad))
        meta.context_lens.copy_(meta.context_lens_cpu)
        meta.block_tables.copy_(torch.tensor(table))
        meta.slot_mapping.copy_(torch.tensor(slots + [self.pad_block * bs] * pad))
        return step()[:n]

    def _capture(self, size: int) -> tuple[_Buffers, Callable[[], torch.Tensor]]:
        buf = _Buffers(size, self.width, self.block_size, self.pad_block, self.device)

        def step() -> torch.Tensor:
            # new views of the fixed tensors, and the step's metadata object: caches that hold per-step
            # tables by tensor identity (rotary rows, a backend's attention plan) see a new step; a recorded
            # graph reads the same storage either way
            return self.forward(buf.ids.view(-1), buf.positions.view(-1), buf.meta, buf.rows, self.cache)

        replay = self.ops.capture_step(step, size)
        if replay is not None:
            self.captured.add(size)
        return buf, replay or step
