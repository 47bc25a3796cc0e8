"""How tensor parallelism (Megatron's layout, as vLLM implements it) splits the decoder over ranks.

- Attention: each rank owns a contiguous block of query heads and the K/V heads they read. QKV is
  column-parallel (each rank computes its heads' q, k, v); o_proj is row-parallel (each rank multiplies its
  heads' outputs by its columns of o_proj) and an all-reduce sums the partial outputs. When there are fewer K/V
  heads than ranks, each K/V head is replicated on the ranks whose query heads read it (vLLM does the same).
- MLP: gate/up column-parallel (each rank a slice of the intermediate width), down row-parallel + all-reduce.
- Vocabulary-parallel embedding and LM head: rank r owns vocabulary rows [r*Vp, (r+1)*Vp), Vp = ceil(V/N) (the
  last rank's tail is zero padding). Embedding: ids outside a rank's rows give zeros, an all-reduce adds them
  up. LM head: each rank's logits for its rows, all-gathered, the padding cut off.
- MLA (DeepSeek, Kimi) and MFA (Step-3): heads split likewise; their low-rank down-projections are
  replicated (layers/attention.py). MoE: every expert's width split as the MLP's, router replicated
  (layers/ffn.py), unless expert parallelism shards the experts whole (expert_parallel.py).
- Norms, RoPE and biases that follow a reduction are replicated (a row-parallel bias is added by rank 0 only,
  before the all-reduce, so it is added once).

Each rank's parameters are only its shard; `Shard` tells the loader which part of a checkpoint tensor to read.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelchip.errors import ModelchipError
from modelchip.runtime.distributed.layout import ParallelLayout, tp_of

__all__ = ["HeadShard", "Shard", "check_family", "even_split", "split_heads", "tp_of", "vocab_rows"]


@dataclass(frozen=True)
class Shard:
    """The part of a checkpoint tensor one rank reads: [start, stop) along `dim`, of a dim `full` long."""

    dim: int
    start: int
    stop: int
    full: int

    def index(self) -> tuple:
        return (slice(None),) * self.dim + (slice(self.start, self.stop),)


def even_split(n: int, rank: int, size: int, what: str) -> tuple[int, int]:
    """[start, stop) of rank's equal share of n, or an error naming `what` when n does not divide."""
    if n % size:
        raise ModelchipError(f"tensor parallel size {size} does not divide the {what} ({n}); choose a size that "
                             "divides it")
    per = n // size
    return rank * per, (rank + 1) * per


@dataclass(frozen=True)
class HeadShard:
    """One rank's heads: query heads [q_start, q_start+heads), K/V heads [kv_start, kv_start+kv_heads)."""

    heads: int
    q_start: int
    kv_heads: int
    kv_start: int


def split_heads(num_heads: int, num_kv_heads: int, rank: int, size: int) -> HeadShard:
    q_start, q_stop = even_split(num_heads, rank, size, "number of attention heads")
    if num_kv_heads >= size:
        kv_start, kv_stop = even_split(num_kv_heads, rank, size, "number of key/value heads")
        return HeadShard(q_stop - q_start, q_start, kv_stop - kv_start, kv_start)
    if size % num_kv_heads:
        raise ModelchipError(f"tensor parallel size {size} is larger than the number of key/value heads "
                             f"({num_kv_heads}) and not a multiple of it, so K/V heads cannot be replicated evenly")
    # fewer K/V heads than ranks: each rank keeps the one K/V head its query heads read
    return HeadShard(q_stop - q_start, q_start, 1, rank // (size // num_kv_heads))


def vocab_rows(vocab: int, rank: int, size: int) -> tuple[int, int, int]:
    """(start, stop, padded rows per rank) of rank's vocabulary rows; stop - start may be < padded."""
    per = -(-vocab // size)
    start = min(rank * per, vocab)
    return start, min(start + per, vocab), per


def check_family(spec, layout: ParallelLayout) -> None:
    """Refuse, naming the family, what these parallel sizes cannot split (sizes that do not divide a head or
    expert count are refused by the layer that splits it, naming the number)."""
    if layout.expert_parallel_size > 1 and not any(layer.ffn.kind == "moe" for layer in spec.layers):
        raise ModelchipError(f"expert parallelism (--expert-parallel-size {layout.expert_parallel_size}) needs a "
                             f"mixture-of-experts model; {spec.family!r} has no MoE layer")
