"""The contract's collectives (contract v2) on the default communicator: two gloo ranks on 127.0.0.1, each
result checked against the same arithmetic done in one process; and the single-process identity."""

from __future__ import annotations

import pytest
import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.backends import get_backend
from modelchip.runtime.distributed.communicator import (
    SPIN_ENV,
    SPIN_SECONDS,
    SingleProcess,
    TorchCommunicator,
    spin_budget,
)


def _rank_tensor(rank: int) -> torch.Tensor:
    return torch.arange(12, dtype=torch.float32).reshape(4, 3) * (rank + 1)


def _collectives(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # the default (polls before blocking, all_to_all_single) and the blocking point-to-point fallback
        polled, blocking = TorchCommunicator(), TorchCommunicator(spin_s=0.0)
        blocking._single_a2a = False
        for name, comm in (("polled", polled), ("blocking", blocking)):
            x = _rank_tensor(rank)
            res = {"all_reduce": comm.all_reduce(x.clone()), "all_gather": comm.all_gather(x, dim=1),
                   "reduce_scatter": comm.reduce_scatter(x, dim=0)}
            # rank r sends r+1 rows (of value r) to every rank, so every rank receives 1 row of 0s and 2 of 1s
            rows = torch.full((world * (rank + 1), 2), float(rank))
            res["all_to_all"] = comm.all_to_all(rows, [s + 1 for s in range(world)], [rank + 1] * world)
            if rank == 0:
                comm.send(torch.tensor([7.0, 8.0]), dst=1)
            else:
                res["recv"] = comm.recv(torch.empty(2), src=0)
            res["calls"], res["spin_s"] = comm.calls, comm.spin_s
            out[(name, rank)] = res
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two interpreters (tens of seconds on a busy 2-core machine)
def test_collectives_on_two_gloo_ranks():
    import torch.multiprocessing as mp

    from modelchip.runtime.distributed.launch import free_port

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_collectives, args=(2, free_port(), out), nprocs=2, join=True, start_method="spawn")
        got = dict(out)
    xs = [_rank_tensor(r) for r in range(2)]
    total = xs[0] + xs[1]
    for name in ("polled", "blocking"):
        for r in range(2):
            res = got[(name, r)]
            torch.testing.assert_close(res["all_reduce"], total)
            torch.testing.assert_close(res["all_gather"], torch.cat(xs, dim=1))
            torch.testing.assert_close(res["reduce_scatter"], total.chunk(2, dim=0)[r])
            torch.testing.assert_close(res["all_to_all"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
            assert res["calls"] == 5
        torch.testing.assert_close(got[(name, 1)]["recv"], torch.tensor([7.0, 8.0]))
    assert got[("blocking", 0)]["spin_s"] == 0.0


def test_spin_budget_polls_only_where_the_host_waits_on_cores_of_its_own(monkeypatch):
    monkeypatch.delenv(SPIN_ENV, raising=False)
    assert spin_budget("gloo", local_ranks=2, cpus=2) == SPIN_SECONDS
    assert spin_budget("gloo", local_ranks=4, cpus=2) == 0.0  # polling would take peers' compute time
    assert spin_budget("nccl", local_ranks=2, cpus=64) == 0.0  # the device waits, not the host
    monkeypatch.setenv(SPIN_ENV, "250")
    assert spin_budget("gloo", local_ranks=4, cpus=2) == pytest.approx(250e-6)
    monkeypatch.setenv(SPIN_ENV, "0")
    assert spin_budget("gloo", local_ranks=2, cpus=2) == 0.0
    for bad in ("fast", "-1"):
        monkeypatch.setenv(SPIN_ENV, bad)
        with pytest.raises(ModelchipError, match=SPIN_ENV):
            spin_budget("gloo", local_ranks=2, cpus=2)


def test_single_process_collectives_are_the_identity():
    ops = get_backend("reference")
    assert isinstance(ops.comm, SingleProcess) and (ops.comm.rank, ops.comm.world_size) == (0, 1)
    x = torch.randn(3, 4)
    for name in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        assert getattr(ops.comm, name)(x) is x
    with pytest.raises(Exception, match="single process"):
        ops.comm.send(x, 1)
