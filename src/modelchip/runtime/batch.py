"""The flattened batch every forward pass takes: token ids, positions and the paged-attention metadata.

Every sequence contributes its new tokens to one flat batch; `paged_attention` reads each one's context through
its block table, so prefill chunks and decodes of many sequences share one forward on any backend. The metadata's
host copies (contract v2) are made here, once per step, from the lists the batch is built from.
"""

from __future__ import annotations

import torch

from modelchip.runtime.contract import AttentionMetadata


def build_batch(new_tokens: list[list[int]], starts: list[int], block_tables: list[list[int]], block_size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """ids [T], positions [T] and metadata for sequences whose `new_tokens[i]` sit at positions `starts[i]`
    onwards, after the tokens already in the cache."""
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    offsets, lens = [0], []
    for tokens, first, table in zip(new_tokens, starts, block_tables, strict=True):
        total = first + len(tokens)
        ids += tokens
        positions += range(first, total)
        slots += [table[p // block_size] * block_size + p % block_size for p in range(first, total)]
        offsets.append(offsets[-1] + len(tokens))
        lens.append(total)
    width = max(len(t) for t in block_tables)
    table = [t + [-1] * (width - len(t)) for t in block_tables]
    offsets_cpu, lens_cpu = torch.tensor(offsets), torch.tensor(lens)
    queries = [len(t) for t in new_tokens]
    decodes = sum(n == 1 for n in queries)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(offsets, device=device), context_lens=torch.tensor(lens, device=device),
        block_tables=torch.tensor(table, device=device), slot_mapping=torch.tensor(slots, device=device),
        block_size=block_size, query_start_loc_cpu=offsets_cpu, context_lens_cpu=lens_cpu,
        max_query_len=max(queries), max_context_len=max(lens), num_prefills=len(queries) - decodes,
        num_decodes=decodes)
    return torch.tensor(ids, device=device), torch.tensor(positions, device=device), meta
