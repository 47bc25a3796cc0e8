"""The KV-cache blocks with their prefix cache (vLLM's automatic prefix caching, as nano-vllm writes it small).

A full block is named by a hash of its tokens chained with the hash of the block before it, so equal hashes mean
equal whole prefixes, not only equal blocks. Blocks are reference-counted: sequences that start with the same
full blocks hold the same physical blocks. A block whose last holder lets go stays in the cache, free but still
findable, until a new block is needed and nothing plainly empty is left; then the least recently freed cached
block is evicted. Blocks in use are never evicted.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

from modelchip.errors import ModelchipError


def hash_block(parent: bytes | None, token_ids: Sequence[int]) -> bytes:
    """SHA-256 of the parent block's hash and this block's token ids (vLLM's default algorithm: with Python's
    64-bit `hash`, two different prompts colliding would silently share K/V)."""
    h = hashlib.sha256(parent or b"")
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class BlockPool:
    """Reference counts, the hash -> block map of cached full blocks, and two kinds of free block: `empty`
    (nothing worth keeping; handed out first) and `evictable` (free but cached, oldest first)."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.ref_count = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}
        self.empty = list(range(num_blocks - 1, -1, -1))  # popped from the end: block 0 first
        self.evictable: OrderedDict[int, None] = OrderedDict()

    @property
    def num_free(self) -> int:
        return len(self.empty) + len(self.evictable)

    @property
    def num_cached(self) -> int:
        return len(self.cached)

    def lookup(self, hashes: Sequence[bytes]) -> list[int]:
        """The blocks of the longest run of `hashes`, from the first, that is cached."""
        blocks = []
        for h in hashes:
            block = self.cached.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def num_evictable(self, blocks: Sequence[int]) -> int:
        """How many of these cached blocks are free now: taking them uses up free blocks too."""
        return sum(1 for b in blocks if self.ref_count[b] == 0)

    def touch(self, blocks: Sequence[int]) -> None:
        """Take a reference on cached blocks (a prefix hit), pulling free ones out of the eviction order."""
        for b in blocks:
            if self.ref_count[b] == 0:
                del self.evictable[b]
            self.ref_count[b] += 1

    def allocate(self, n: int) -> list[int]:
        """`n` blocks for new tokens, all or none: empty ones first, then the least recently freed cached ones."""
        if n > self.num_free:
            raise ModelchipError(f"KV cache is full: {n} blocks needed, {self.num_free} free")
        out = []
        for _ in range(n):
            if self.empty:
                b = self.empty.pop()
            else:
                b, _ = self.evictable.popitem(last=False)
                del self.cached[self.block_hash[b]]
                self.block_hash[b] = None
            self.ref_count[b] = 1
            out.append(b)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference on each block. A sequence's last blocks are freed first, so they are evicted first:
        a long prompt's tail is the part least likely to be shared."""
        for b in reversed(blocks):
            self.ref_count[b] -= 1
            if self.ref_count[b] < 0:
                raise ModelchipError(f"KV block {b} released more often than it was taken")
            if self.ref_count[b] == 0:
                if self.block_hash[b] is None:
                    self.empty.append(b)
                else:
                    self.evictable[b] = None

    def cache(self, block: int, block_hash: bytes) -> None:
        """Make a full block findable by its hash. A block whose hash is already cached elsewhere (computed twice,
        e.g. by two requests admitted before either was cached) stays plain and goes back empty when freed."""
        if self.block_hash[block] is None and block_hash not in self.cached:
            self.cached[block_hash] = block
            self.block_hash[block] = block_hash

    def reset(self) -> None:
        """Forget every cached block (after a failed step their contents cannot be trusted)."""
        for b in self.evictable:
            self.empty.append(b)
        self.evictable.clear()
        self.cached.clear()
        self.block_hash = [None] * self.num_blocks
