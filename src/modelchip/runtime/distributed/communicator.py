"""Communicators: the contract's collectives (contract.Communicator) over torch.distributed, or over one process.

A backend may bring its own (the `make_communicator(group)` hook, e.g. a vendor collective library that
bypasses torch.distributed); every other backend gets `TorchCommunicator`, which works on whatever process group
the launcher built (gloo on CPU, nccl, hccl, ...), so contract v1 backends run in parallel unchanged.
"""

from __future__ import annotations

import time

import torch

from modelchip.errors import ModelchipError


class SingleProcess:
    """The communicator of a run that is one process: every collective is the identity."""

    rank = 0
    world_size = 1
    seconds = 0.0
    calls = 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return x

    def reduce_scatter(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return x

    def all_to_all(self, x: torch.Tensor, output_split_sizes: list[int] | None = None,
                   input_split_sizes: list[int] | None = None) -> torch.Tensor:
        return x

    def send(self, x: torch.Tensor, dst: int) -> None:
        raise ModelchipError(f"send to rank {dst}: this run is a single process, there is no other rank")

    def recv(self, x: torch.Tensor, src: int) -> torch.Tensor:
        raise ModelchipError(f"recv from rank {src}: this run is a single process, there is no other rank")


class TorchCommunicator:
    """The default communicator: torch.distributed collectives on one process group.

    Counts the calls and the wall time spent in them (`calls`, `seconds`), so a run can report the
    communication share of its steps without a profiler.
    """

    def __init__(self, group=None):
        import torch.distributed as dist

        self._dist, self.group = dist, group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.seconds, self.calls = 0.0, 0

    def _timed(self, start: float) -> None:
        self.seconds += time.perf_counter() - start
        self.calls += 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        x = x.contiguous()
        self._dist.all_reduce(x, group=self.group)
        self._timed(start)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        start = time.perf_counter()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        self._dist.all_gather(parts, x.contiguous(), group=self.group)
        out = torch.cat(parts, dim=dim)
        self._timed(start)
        return out

    def reduce_scatter(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        # gloo has no reduce_scatter: all-reduce, then keep this rank's chunk (same result, more traffic)
        start = time.perf_counter()
        if x.shape[dim] % self.world_size:
            raise ModelchipError(f"reduce_scatter: dim {dim} of size {x.shape[dim]} does not split over "
                                 f"{self.world_size} ranks")
        chunks = list(x.contiguous().chunk(self.world_size, dim=dim))
        try:
            out = torch.empty_like(chunks[self.rank]).contiguous()
            self._dist.reduce_scatter(out, [c.contiguous() for c in chunks], group=self.group)
        except RuntimeError as exc:
            if "does not support reduce_scatter" not in str(exc) and "not supported" not in str(exc):
                raise
            full = x.contiguous().clone()
            self._dist.all_reduce(full, group=self.group)
            out = full.chunk(self.world_size, dim=dim)[self.rank].contiguous()
        self._timed(start)
        return out

    def all_to_all(self, x: torch.Tensor, output_split_sizes: list[int] | None = None,
                   input_split_sizes: list[int] | None = None) -> torch.Tensor:
        """Rows of x (dim 0) split by `input_split_sizes` go to ranks 0..N-1; the rows received, by
        `output_split_sizes`, come back concatenated in rank order (expert dispatch and combine)."""
        start = time.perf_counter()
        n = self.world_size
        ins = input_split_sizes or [x.shape[0] // n] * n
        outs = output_split_sizes or ins
        send = list(x.contiguous().split(ins, dim=0))
        recv = [x.new_empty((size, *x.shape[1:])) for size in outs]
        # all_to_all as pairwise send/recv: gloo lacks the list form; every backend has point-to-point
        ops = [self._dist.P2POp(self._dist.isend, send[r].contiguous(), self._peer(r), self.group)
               for r in range(n) if r != self.rank]
        ops += [self._dist.P2POp(self._dist.irecv, recv[r], self._peer(r), self.group)
                for r in range(n) if r != self.rank]
        recv[self.rank].copy_(send[self.rank])
        if ops:
            for req in self._dist.batch_isend_irecv(ops):
                req.wait()
        self._timed(start)
        return torch.cat(recv, dim=0)

    def send(self, x: torch.Tensor, dst: int) -> None:
        start = time.perf_counter()
        self._dist.send(x.contiguous(), self._peer(dst), group=self.group)
        self._timed(start)

    def recv(self, x: torch.Tensor, src: int) -> torch.Tensor:
        start = time.perf_counter()
        self._dist.recv(x, self._peer(src), group=self.group)
        self._timed(start)
        return x

    def isend(self, x: torch.Tensor, dst: int):
        """Start sending x to rank dst; returns a handle whose wait() ends it (x must live until then).
        Not a contract op: attention-FFN disaggregation overlaps its exchanges with compute through it."""
        self.calls += 1
        return self._dist.isend(x.contiguous(), self._peer(dst), group=self.group)

    def irecv(self, x: torch.Tensor, src: int):
        """Start receiving from rank src into x; wait() on the handle returned, then read x."""
        self.calls += 1
        return self._dist.irecv(x, self._peer(src), group=self.group)

    def _peer(self, rank: int) -> int:
        # point-to-point calls take global ranks; the contract speaks ranks within the group
        return rank if self.group is None else self._dist.get_global_rank(self.group, rank)


def make_communicator(backend, group=None):
    """The backend's own communicator when it has the hook, else the torch.distributed default."""
    hook = getattr(backend, "make_communicator", None)
    return hook(group) if hook is not None else TorchCommunicator(group)
