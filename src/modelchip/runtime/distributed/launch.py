"""Starting the ranks of a parallel run and connecting them: spawned on this machine, or joined from torchrun.

- Spawned (`LoadedModel(..., tensor_parallel_size=N)` in a plain process): this process is rank 0; it spawns
  N-1 worker processes (torch.multiprocessing, spawn) and all meet over TCP on 127.0.0.1 at a free port.
- torchrun (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE set, on one or many machines): every rank runs the same
  command and joins the group through the environment (`env://`); rank 0 drives, the others serve steps.

The process-group backend is torch's default for the device type (gloo on CPU, nccl on CUDA, a plugin's for
its device), so no device or vendor is named here. A second, gloo group carries rank 0's control messages.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch

from modelchip.errors import ModelchipError

TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
# how long a collective may wait for a peer that is alive but silent; a peer that died is noticed at once
# (its sockets close), so this only bounds hangs. MODELCHIP_COLLECTIVE_TIMEOUT overrides it (seconds).
DEFAULT_TIMEOUT_S = 60.0


def collective_timeout() -> timedelta:
    value = os.environ.get("MODELCHIP_COLLECTIVE_TIMEOUT", "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError as exc:
        raise ModelchipError(f"MODELCHIP_COLLECTIVE_TIMEOUT={value!r} is not a number of seconds") from exc
    return timedelta(seconds=seconds)


def torchrun_env() -> tuple[int, int] | None:
    """(rank, world size) when torchrun (or any launcher setting its variables) started this process."""
    if not all(v in os.environ for v in TORCHRUN_VARS):
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError as exc:
        raise ModelchipError(f"RANK={os.environ['RANK']!r} / WORLD_SIZE={os.environ['WORLD_SIZE']!r} are not "
                             "integers") from exc


def rank_device(device: str | torch.device, local_rank: int) -> torch.device:
    """The device of the rank with this local rank: CPU ranks share the CPU; on an accelerator each rank on a
    machine takes its own device, counting from the one given (cuda:0 -> cuda:0, cuda:1, ...)."""
    device = torch.device(device)
    if device.type == "cpu" or local_rank == 0:
        return device
    return torch.device(device.type, (device.index or 0) + local_rank)


def local_rank() -> int:
    """This process's rank on its machine under torchrun (LOCAL_RANK), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) if torchrun_env() is not None else 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_backend(device: torch.device) -> str:
    """torch's default process-group backend for a device type (cpu: gloo, cuda: nccl, plugins: theirs)."""
    import torch.distributed as dist

    backend = dist.Backend.default_device_backend_map.get(device.type)
    if backend is None:
        raise ModelchipError(f"torch.distributed has no process-group backend registered for device type "
                             f"{device.type!r}; the device's torch plugin must register one")
    return backend


# Rank 0 may sit idle for long (a server between requests) while the others wait on the control group, so its
# timeout is long; a rank that dies still closes its sockets, which every peer notices at once.
CONTROL_TIMEOUT = timedelta(days=7)
_control = None  # the gloo group of rank 0's control messages, made once per process by init_group


def control_group():
    return _control


def init_group(rank: int, world_size: int, device: torch.device, init_method: str):
    """Join the default process group (if this process has not) and make the gloo control group that rank 0
    broadcasts steps on; returns it."""
    import torch.distributed as dist

    global _control

    if not dist.is_available():
        raise ModelchipError("this torch build has no torch.distributed; parallel runs need it")
    if dist.is_initialized():
        if dist.get_world_size() != world_size:
            raise ModelchipError(f"torch.distributed is already initialised with {dist.get_world_size()} ranks, "
                                 f"the run asks for {world_size}")
    else:
        try:
            dist.init_process_group(group_backend(device), init_method=init_method, rank=rank,
                                    world_size=world_size, timeout=collective_timeout())
        except (RuntimeError, ValueError) as exc:
            raise ModelchipError(f"rank {rank} of {world_size} could not join the process group at "
                                 f"{init_method}: {exc}") from exc
    if _control is None:
        _control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return _control


def shutdown_group() -> None:
    import torch.distributed as dist

    global _control
    _control = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
