"""The contract's collectives (contract v2) on the default communicator: two gloo ranks on 127.0.0.1, each
result checked against the same arithmetic done in one process; and the single-process identity."""

from __future__ import annotations

import pytest
import torch

from modelchip.runtime.backends import get_backend
from modelchip.runtime.distributed.communicator import SingleProcess, TorchCommunicator


def _rank_tensor(rank: int) -> torch.Tensor:
    return torch.arange(12, dtype=torch.float32).reshape(4, 3) * (rank + 1)


def _collectives(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        comm = TorchCommunicator()
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
        res["calls"] = comm.calls
        out[rank] = res
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
    for r in range(2):
        torch.testing.assert_close(got[r]["all_reduce"], total)
        torch.testing.assert_close(got[r]["all_gather"], torch.cat(xs, dim=1))
        torch.testing.assert_close(got[r]["reduce_scatter"], total.chunk(2, dim=0)[r])
    for r in range(2):
        torch.testing.assert_close(got[r]["all_to_all"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(got[1]["recv"], torch.tensor([7.0, 8.0]))
    assert got[0]["calls"] == 5 and got[1]["calls"] == 5


def test_single_process_collectives_are_the_identity():
    ops = get_backend("reference")
    assert isinstance(ops.comm, SingleProcess) and (ops.comm.rank, ops.comm.world_size) == (0, 1)
    x = torch.randn(3, 4)
    for name in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        assert getattr(ops.comm, name)(x) is x
    with pytest.raises(Exception, match="single process"):
        ops.comm.send(x, 1)
