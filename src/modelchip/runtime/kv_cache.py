"""The paged KV cache: per-layer tensors of fixed-size blocks (the engine's block manager hands them out).

A sequence owns a list of blocks (its block table); token i of the sequence lives in slot
block_table[i // block_size] * block_size + i % block_size of every layer's cache.
"""

from __future__ import annotations

import torch


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
