"""Hands KV-cache blocks to sequences as they grow, and takes them back when they finish, abort or are
preempted. The cache layout per layer (GQA K/V, MLA latent, MFA's shared head) is the model's business; a block
is a block here.

With prefix caching (on by default), a sequence being admitted starts from the cached blocks of its longest
cached run of full blocks, and every block a step fills is cached as soon as it is scheduled: a model layer
writes the K/V of every new token of the batch before any attention reads the cache, so a sequence admitted in
the same step may already read a block another one is filling (`n` copies of one prompt, a shared system prompt).
"""

from __future__ import annotations

from collections.abc import Sequence as Blocks

from modelchip.engine.block_pool import BlockPool, hash_block
from modelchip.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        # tokens of admitted sequences looked up in the cache, and those found (vLLM's prefix_cache_queries/hits)
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds, cached ones included (they are evicted when needed)."""
        return self.pool.num_free

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.pool.num_free

    @property
    def num_cached_blocks(self) -> int:
        return self.pool.num_cached

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences, 0 to 1 (vLLM's kv_cache_usage_perc)."""
        return self.num_used_blocks / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks a sequence with nothing computed can start from: the longest cached run of its full
        blocks, short of its last token (which must be computed for its logits). Nothing for a request that
        skips reading the cache (it still fills it)."""
        if (not self.enable_prefix_caching or seq.params.skip_reading_prefix_cache or seq.num_computed_tokens
                or seq.block_table):
            return []
        limit = (seq.num_tokens - 1) // self.block_size
        return self.pool.lookup(self._hashes(seq, limit)[:limit])

    def blocks_needed(self, seq: Sequence, num_new_tokens: int, prefix: Blocks[int] = ()) -> int:
        """Free blocks it takes for `seq` to hold its computed tokens, the cached `prefix` it starts from (when
        being admitted) and `num_new_tokens` more. Free cached blocks of the prefix count: they stop being free."""
        start = seq.num_computed_tokens + len(prefix) * self.block_size
        new = max(0, self.blocks_for(start + num_new_tokens) - len(seq.block_table) - len(prefix))
        return new + self.pool.num_evictable(prefix)

    def can_allocate(self, num_blocks: int, reserve: int = 0) -> bool:
        return num_blocks + reserve <= self.pool.num_free

    def allocate(self, seq: Sequence, num_new_tokens: int, prefix: Blocks[int] | None = None) -> None:
        """Give `seq` the blocks for `num_new_tokens` more tokens. `prefix` (admission only: what
        `cached_prefix` found, maybe nothing) becomes the start of its block table and counts as computed."""
        if prefix is not None and self.enable_prefix_caching:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += len(prefix) * self.block_size
            if prefix:
                self.pool.touch(prefix)
                seq.block_table = list(prefix)
                seq.num_computed_tokens = len(prefix) * self.block_size
        need = max(0, self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table))
        if need:
            seq.block_table += self.pool.allocate(need)
        if self.enable_prefix_caching:
            self._cache_filled(seq, seq.num_computed_tokens + num_new_tokens)

    def free(self, seq: Sequence) -> None:
        if seq.block_table:
            self.pool.release(seq.block_table)
            seq.block_table = []

    def reset_prefix_cache(self) -> None:
        """Forget every cached block: after a failed step, blocks cached for it may hold nothing valid."""
        self.pool.reset()

    def _cache_filled(self, seq: Sequence, num_tokens: int) -> None:
        """Cache the blocks that this step's tokens fill (the ones before were cached when they filled)."""
        first, full = seq.num_computed_tokens // self.block_size, num_tokens // self.block_size
        if full > first:
            hashes = self._hashes(seq, full)
            for i in range(first, full):
                self.pool.cache(seq.block_table[i], hashes[i])

    def _hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Hashes of the first `num_blocks` full blocks of `seq`, computed once per block (tokens never change,
        so they survive preemption)."""
        hashes, bs = seq.block_hashes, self.block_size
        while len(hashes) < num_blocks:
            i = len(hashes)
            hashes.append(hash_block(hashes[-1] if hashes else None, seq.token_ids[i * bs:(i + 1) * bs]))
        return hashes
