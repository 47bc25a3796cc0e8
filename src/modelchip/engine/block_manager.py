"""Hands KV-cache blocks to sequences as they grow, and takes them back when they finish, abort or are
preempted. The cache layout per layer (GQA K/V, MLA latent, MFA's shared head) is the model's business; a block
is a block here."""

from __future__ import annotations

from modelchip.engine.sequence import Sequence
from modelchip.runtime.kv_cache import BlockAllocator


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.allocator = BlockAllocator(num_blocks)

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.allocator.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks `seq` lacks to hold its computed tokens plus `num_new_tokens` more."""
        return max(0, self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table))

    def can_allocate(self, num_blocks: int, reserve: int = 0) -> bool:
        return num_blocks + reserve <= self.allocator.num_free

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        need = self.blocks_needed(seq, num_new_tokens)
        if need:
            seq.block_table += self.allocator.allocate(need)

    def free(self, seq: Sequence) -> None:
        if seq.block_table:
            self.allocator.release(seq.block_table)
            seq.block_table = []
