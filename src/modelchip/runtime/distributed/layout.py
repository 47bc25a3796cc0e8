"""How a parallel run's ranks divide a model: tensor-parallel attention, data-parallel attention, expert-parallel
MoE. One `ParallelLayout` per run, checked once, read by every layer (`tp_of`, `ep_of`, `dp_of`).

The combinations follow vLLM (`--tensor-parallel-size`, `--data-parallel-size`, `--enable-expert-parallel`):

- TP N: attention heads, dense MLPs and MoE experts' widths split over N ranks (Megatron).
- TP N + EP N: attention heads split as in TP; MoE experts sharded whole over the same N ranks.
- EP M alone: attention replicated (every rank computes it for every token); experts sharded over M ranks.
- DP D + EP D (DeepSeek's deployment): each rank runs attention for its own sequences with full weights and its
  own KV cache; MoE layers are expert-parallel over all D ranks.

World size is the largest of the three. TP and DP together (DP groups of TP ranks) are not built yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelchip.errors import ModelchipError


@dataclass(frozen=True)
class ParallelLayout:
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    expert_parallel_size: int = 1

    @property
    def world_size(self) -> int:
        return max(self.tensor_parallel_size, self.data_parallel_size, self.expert_parallel_size)

    def describe(self) -> str:
        parts = [f"{name} {size}" for name, size in (("tensor parallel", self.tensor_parallel_size),
                                                     ("data parallel", self.data_parallel_size),
                                                     ("expert parallel", self.expert_parallel_size)) if size > 1]
        return ", ".join(parts) or "one process"

    def rank_label(self) -> str:
        """How errors name this layout's ranks: "expert-parallel rank 1", "data-parallel + expert-parallel rank
        1" (tensor-parallel when nothing is split, as a torchrun launch without sizes is)."""
        kinds = [f"{name}-parallel" for name, size in (("tensor", self.tensor_parallel_size),
                                                       ("data", self.data_parallel_size),
                                                       ("expert", self.expert_parallel_size)) if size > 1]
        return " + ".join(kinds) or "tensor-parallel"


def make_layout(tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                expert_parallel_size: int = 1) -> ParallelLayout:
    """The layout these sizes ask for, or an error naming the size that cannot work."""
    for name, size in (("tensor_parallel_size", tensor_parallel_size), ("data_parallel_size", data_parallel_size),
                       ("expert_parallel_size", expert_parallel_size)):
        if not isinstance(size, int) or size < 1:
            raise ModelchipError(f"{name} must be a whole number of at least 1, got {size!r}")
    tp, dp, ep = tensor_parallel_size, data_parallel_size, expert_parallel_size
    if tp > 1 and dp > 1:
        raise ModelchipError(f"tensor parallel size {tp} with data parallel size {dp}: data-parallel groups of "
                             "tensor-parallel ranks are not built yet; use one of them (with expert parallelism)")
    if dp > 1 and ep != dp:
        raise ModelchipError(f"data parallel size {dp} needs expert parallel size {dp} (got {ep}): data-parallel "
                             "attention runs with expert-parallel MoE over the same ranks, as DeepSeek deploys it; "
                             "plain data parallelism is separate servers")
    if tp > 1 and ep not in (1, tp):
        raise ModelchipError(f"expert parallel size {ep} with tensor parallel size {tp}: experts are sharded over "
                             f"the tensor-parallel ranks, so it must be 1 or {tp}")
    return ParallelLayout(tp, dp, ep)


def _layout(ops) -> ParallelLayout | None:
    return getattr(ops, "layout", None)


def _rank(ops) -> tuple[int, int]:
    comm = getattr(ops, "comm", None)
    return (0, 1) if comm is None else (comm.rank, comm.world_size)


def tp_of(ops) -> tuple[int, int]:
    """(rank, size) of the tensor-parallel group attention and dense MLPs split over; (0, 1) when they are whole."""
    layout = _layout(ops)
    if layout is None:  # a group attached without a layout: all of it is tensor parallel
        return _rank(ops)
    return _rank(ops) if layout.tensor_parallel_size > 1 else (0, 1)


def ep_of(ops) -> tuple[int, int]:
    """(rank, size) of the group MoE experts are sharded over; (0, 1) when every rank holds every expert."""
    layout = _layout(ops)
    return _rank(ops) if layout is not None and layout.expert_parallel_size > 1 else (0, 1)


def dp_of(ops) -> tuple[int, int]:
    """(rank, size) of the data-parallel group: each rank attends over its own sequences."""
    layout = _layout(ops)
    return _rank(ops) if layout is not None and layout.data_parallel_size > 1 else (0, 1)
