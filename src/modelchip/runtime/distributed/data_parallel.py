"""Data-parallel attention: rank 0's step split by sequence over the ranks, and the rows needing logits brought
back to rank 0.

Rank 0 still schedules every sequence and owns the one block manager; it broadcasts the whole step as in tensor
parallelism. Each rank then keeps the sequences it owns: a sequence belongs to rank `first block id % D`. The
first block of a sequence never changes while it lives, and sequences that share cached prefix blocks share
their first block, so a sequence's KV blocks are always written and read on the same rank. (Each rank therefore
allocates the full block count, of which it uses about 1/D: simple and correct, not memory-optimal.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelchip.runtime.contract import AttentionMetadata


@dataclass
class LocalBatch:
    ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    last: torch.Tensor  # this rank's rows (local indices) among the rows that need logits
    owner: list[int]  # for every row needing logits, in order: the rank that computes it
    slot: list[int]  # ... and its place among that rank's rows


def owners(meta: AttentionMetadata, size: int) -> torch.Tensor:
    """[S] the rank that holds each sequence's KV cache."""
    return meta.block_tables[:, 0].remainder(size)


def local_batch(ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, last: torch.Tensor | None,
                rank: int, size: int) -> LocalBatch:
    """The sequences of the step this rank owns, as a batch of their own."""
    seq_owner = owners(meta, size)
    lengths = meta.query_start_loc[1:] - meta.query_start_loc[:-1]
    token_owner = seq_owner.repeat_interleave(lengths)
    mine_seq = seq_owner == rank
    mine_tok = token_owner == rank
    local_lengths = lengths[mine_seq]
    starts = torch.zeros(local_lengths.shape[0] + 1, dtype=meta.query_start_loc.dtype,
                         device=meta.query_start_loc.device)
    starts[1:] = local_lengths.cumsum(0)
    local_meta = AttentionMetadata(starts, meta.context_lens[mine_seq], meta.block_tables[mine_seq],
                                   meta.slot_mapping[mine_tok], meta.block_size)
    # a row's index within its owner's tokens: its rank among the earlier tokens of the same owner
    local_index = torch.zeros_like(token_owner)
    for r in range(size):
        where = token_owner == r
        local_index[where] = torch.arange(int(where.sum()), device=token_owner.device)
    wanted = torch.zeros(0, dtype=torch.long) if last is None else last.cpu()
    owner = token_owner.cpu()[wanted].tolist()
    index = local_index.cpu()[wanted].tolist()
    slot, seen = [], [0] * size
    for o in owner:
        slot.append(seen[o])
        seen[o] += 1
    mine_last = torch.tensor([i for o, i in zip(owner, index, strict=True) if o == rank], dtype=torch.long,
                             device=ids.device)
    return LocalBatch(ids[mine_tok], positions[mine_tok], local_meta, mine_last, owner, slot)


def gather_rows(comm, hidden: torch.Tensor, batch: LocalBatch) -> torch.Tensor:
    """Every rank's rows of `hidden` needing logits, all-gathered and put back in the step's order (every rank
    calls it; all_gather needs equal shapes, so each rank's rows are padded to the largest count)."""
    counts = [batch.owner.count(r) for r in range(comm.world_size)]
    most = max(counts)
    if most == 0:  # every rank knows the counts, so all skip the gather together
        return hidden.new_zeros(0, hidden.shape[-1])
    padded = hidden.new_zeros(most, hidden.shape[-1])
    padded[:counts[comm.rank]] = hidden[batch.last]
    every = comm.all_gather(padded, dim=0)
    order = torch.tensor([o * most + s for o, s in zip(batch.owner, batch.slot, strict=True)], dtype=torch.long,
                         device=hidden.device)
    return every[order]
