"""The paged KV cache: per-layer tensors of fixed-size blocks (the engine's block manager hands them out).

A sequence owns a list of blocks (its block table); token i of the sequence lives in slot
block_table[i // block_size] * block_size + i % block_size of every layer's cache. The backend allocates each
layer's tensors in its own layout (contract v2: `allocate_kv_cache`, vLLM's `get_kv_cache_shape` idea); only its
`write_kv` and `paged_attention` read them, so nothing here assumes a layout.
"""

from __future__ import annotations

import torch

from modelchip.runtime.contract import CacheLayout


class KVCache:
    def __init__(self, ops, layouts: list[CacheLayout], num_blocks: int, block_size: int, dtype: torch.dtype):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.layers: list[tuple[torch.Tensor, torch.Tensor | None]] = [
            ops.allocate_kv_cache(lay, num_blocks, block_size, dtype) for lay in layouts]

    @staticmethod
    def bytes_per_token(layouts: list[CacheLayout], dtype: torch.dtype) -> int:
        size = torch.finfo(dtype).bits // 8
        return sum(lay.heads * (lay.k_dim + (lay.v_dim if lay.separate_v else 0)) * size for lay in layouts)
