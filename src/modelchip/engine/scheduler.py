"""Continuous batching with chunked prefill: every step picks which sequences run and how many of their
tokens, under a token budget, and requests join and leave the running batch between any two steps.

Policy (vLLM's v1 scheduler, simplified): running sequences go first, oldest first, so decodes are never starved
by a long prompt; each takes the tokens it still lacks (1 for a decode, up to the rest of the budget for a prompt
being prefilled in chunks). When the cache has no block for one of them, the newest running sequence is preempted
by recompute: its blocks are freed and it goes back to the front of the queue with its generated tokens kept.
Then waiting sequences are admitted in arrival order while budget, sequence slots and blocks last, except in a
step that had to preempt (admitting then would only thrash). An admitted sequence starts past the full blocks of
its prefix found in the prefix cache (the block manager's), so only the rest counts against the budget.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from modelchip.engine.block_manager import BlockManager
from modelchip.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    # blocks kept free when admitting a new request, so running ones can grow without preempting at once
    watermark_blocks: int = 0


@dataclass
class SchedulerOutput:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queues and give its blocks back now (finish or abort)."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        bm = self.block_manager
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            while not bm.can_allocate(bm.blocks_needed(seq, n)):
                victim = self.running[-1]  # newest first: it has the least work to redo
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                bm.allocate(seq, n)
                out.seqs.append(seq)
                out.num_new_tokens.append(n)
                budget -= n
                i += 1
                continue
            break  # `seq` itself was preempted: it was the last running sequence
        if out.preempted:
            return out
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            prefix = bm.cached_prefix(seq)  # its cached full blocks are not computed again
            n = min(seq.num_uncomputed_tokens - len(prefix) * bm.block_size, budget)
            reserve = self.config.watermark_blocks if self.running else 0
            if not bm.can_allocate(bm.blocks_needed(seq, n, prefix), reserve):
                break
            self.waiting.popleft()
            bm.allocate(seq, n, prefix)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.seqs.append(seq)
            out.num_new_tokens.append(n)
            budget -= n
        return out
