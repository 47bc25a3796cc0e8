"""The paged KV cache: per-layer tensors of fixed-size blocks, and the allocator that hands blocks out.

A sequence owns a list of blocks (its block table); token i of the sequence lives in slot
block_table[i // block_size] * block_size + i % block_size of every layer's cache.
"""

from __future__ import annotations

import torch

from modelchip.errors import ModelchipError


class KVCache:
    def __init__(self, layouts, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.layers: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for lay in layouts:
            k = torch.zeros(num_blocks, block_size, lay.heads, lay.k_dim, dtype=dtype, device=device)
            v = (torch.zeros(num_blocks, block_size, lay.heads, lay.v_dim, dtype=dtype, device=device)
                 if lay.separate_v else None)
            self.layers.append((k, v))

    @staticmethod
    def bytes_per_token(layouts, dtype: torch.dtype) -> int:
        size = torch.finfo(dtype).bits // 8
        return sum(lay.heads * (lay.k_dim + (lay.v_dim if lay.separate_v else 0)) * size for lay in layouts)


class BlockAllocator:
    """Free-list of cache blocks; `allocate` either gives all the blocks asked for or none."""

    def __init__(self, num_blocks: int):
        self.free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self.free):
            raise ModelchipError(f"KV cache is full: {n} blocks needed, {len(self.free)} free")
        return [self.free.pop() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        self.free.extend(reversed(blocks))
