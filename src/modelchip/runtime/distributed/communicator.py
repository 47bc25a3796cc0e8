"""Communicators: the contract's collectives (contract.Communicator) over torch.distributed, or over one process.

A backend may bring its own (the `make_communicator(group)` hook, e.g. a vendor collective library that
bypasses torch.distributed); every other backend gets `TorchCommunicator`, which works on whatever process group
the launcher built (gloo on CPU, nccl, hccl, ...), so contract v1 backends run in parallel unchanged.
"""

from __future__ import annotations

import os
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


# How long a rank polls a collective it waits on before it blocks. A rank that blocks lets its core go idle, and
# the peer's data then waits for that core to wake: on a 2-core VM a small all-reduce after 2.5 ms of matmuls took
# 1.2-2.4 ms when the rank blocked and 0.5-0.8 ms when it polled with sched_yield (BENCHMARKS.md, "Waiting on a
# collective"). vLLM's shared-memory broadcast polls the same way (SpinTimer in
# vllm/distributed/device_communicators/shm_broadcast.py). The bound keeps an idle rank from burning its core: past
# it the wait blocks as before, so a rank that died is still noticed by the process group's own timeout.
SPIN_SECONDS = 0.05
SPIN_ENV = "MODELCHIP_COLLECTIVE_SPIN_US"


def spin_budget(group_backend: str, local_ranks: int, cpus: int) -> float:
    """Seconds a rank polls before blocking: only where the host itself waits (gloo) and every local rank has a
    core of its own (polling ranks on shared cores would take the time their peers compute in); the
    MODELCHIP_COLLECTIVE_SPIN_US environment variable sets it outright (0: always block)."""
    env = os.environ.get(SPIN_ENV)
    if env is not None:
        try:
            us = float(env)
        except ValueError:
            raise ModelchipError(f"{SPIN_ENV}={env!r}: give the microseconds to poll a collective before "
                                 "blocking (0 to always block)") from None
        if us < 0:
            raise ModelchipError(f"{SPIN_ENV}={env!r} is negative; 0 means always block")
        return us / 1e6
    if group_backend != "gloo" or local_ranks > cpus:
        return 0.0
    return SPIN_SECONDS


class _Polled:
    """A collective started with async_op; wait() finishes it the communicator's way (poll, then block)."""

    def __init__(self, comm: TorchCommunicator, work):
        self._comm, self._work = comm, work

    def wait(self) -> None:
        self._comm._complete([self._work])


class TorchCommunicator:
    """The default communicator: torch.distributed collectives on one process group.

    Counts the calls and the wall time spent in them (`calls`, `seconds`), so a run can report the
    communication share of its steps without a profiler, and the waits that outlasted the polling budget and
    blocked (`blocked_waits`; `spin_s` is the budget, 0 where every wait blocks).
    """

    def __init__(self, group=None, spin_s: float | None = None):
        import torch.distributed as dist

        self._dist, self.group = dist, group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.seconds, self.calls = 0.0, 0
        if spin_s is None:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
            spin_s = spin_budget(str(dist.get_backend(group)), local, _usable_cpus())
        self.spin_s, self.blocked_waits = spin_s, 0
        self._single_a2a = True  # all_to_all_single where the backend has it (pollable), else point-to-point

    def _timed(self, start: float) -> None:
        self.seconds += time.perf_counter() - start
        self.calls += 1

    def _complete(self, works: list, poll: bool = True) -> None:
        if poll and self.spin_s > 0:
            deadline = time.perf_counter() + self.spin_s
            while not all(w.is_completed() for w in works):
                if time.perf_counter() > deadline:
                    self.blocked_waits += 1
                    break
                os.sched_yield()
        for w in works:
            w.wait()

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        x = x.contiguous()
        self._complete([self._dist.all_reduce(x, group=self.group, async_op=True)])
        self._timed(start)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        start = time.perf_counter()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        self._complete([self._dist.all_gather(parts, x.contiguous(), group=self.group, async_op=True)])
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
            self._complete([self._dist.reduce_scatter(out, [c.contiguous() for c in chunks], group=self.group,
                                                      async_op=True)])
        except RuntimeError as exc:
            if "does not support reduce_scatter" not in str(exc) and "not supported" not in str(exc):
                raise
            full = x.contiguous().clone()
            self._complete([self._dist.all_reduce(full, group=self.group, async_op=True)])
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
        x = x.contiguous()
        out = x.new_empty((sum(outs), *x.shape[1:]))
        if self._single_a2a:
            try:
                work = self._dist.all_to_all_single(out, x, outs, ins, group=self.group, async_op=True)
            except RuntimeError as exc:  # a backend without it: point-to-point from now on
                if "support" not in str(exc):
                    raise
                self._single_a2a = False
            else:
                self._complete([work])
                self._timed(start)
                return out
        send, recv = x.split(ins, dim=0), out.split(outs, dim=0)
        # pairwise send/recv, which every backend has (gloo's point-to-point handles cannot be polled: they block)
        ops = [self._dist.P2POp(self._dist.isend, send[r].contiguous(), self._peer(r), self.group)
               for r in range(n) if r != self.rank]
        ops += [self._dist.P2POp(self._dist.irecv, recv[r], self._peer(r), self.group)
                for r in range(n) if r != self.rank]
        recv[self.rank].copy_(send[self.rank])
        if ops:
            self._complete(self._dist.batch_isend_irecv(ops), poll=False)
        self._timed(start)
        return out

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

    def broadcast(self, x: torch.Tensor, src: int) -> torch.Tensor:
        """x from rank `src` of this group, in place on every rank. Not a contract op: attention-FFN
        disaggregation sends its activations this way where it can, since a broadcast's handle can be polled
        and gloo's point-to-point ones cannot (they always block)."""
        start = time.perf_counter()
        self._complete([self._dist.broadcast(x, src=self._peer(src), group=self.group, async_op=True)])
        self._timed(start)
        return x

    def ibroadcast(self, x: torch.Tensor, src: int) -> _Polled:
        """Start `broadcast`; wait() on the handle returned (x must live until then)."""
        self.calls += 1
        return _Polled(self, self._dist.broadcast(x, src=self._peer(src), group=self.group, async_op=True))

    def _peer(self, rank: int) -> int:
        # point-to-point calls take global ranks; the contract speaks ranks within the group
        return rank if self.group is None else self._dist.get_global_rank(self.group, rank)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_communicator(backend, group=None):
    """The backend's own communicator when it has the hook, else the torch.distributed default."""
    hook = getattr(backend, "make_communicator", None)
    return hook(group) if hook is not None else TorchCommunicator(group)
