"""`ParallelRun`: one process's place in a parallel run, and rank 0's way of driving the others.

nano-vllm's pattern: rank 0 owns the scheduler; for every forward it broadcasts the step's inputs (token ids,
positions, attention metadata, which rows need logits) on the control group, and every rank runs the same
forward, meeting in the model's collectives. Only rank 0 samples. A rank that dies surfaces on rank 0 as a
failed collective or a dead process; either way the run ends with a ModelchipError naming the rank, never a hang.
"""

from __future__ import annotations

import contextlib
import time

import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.distributed import launch

CLOSED = "this parallel run was closed"


def _describe(rank: int, exitcode: int) -> str:
    if exitcode < 0:
        import signal

        return f"rank {rank} died (killed by {signal.Signals(-exitcode).name})"
    return f"rank {rank} exited with code {exitcode}"


class ParallelRun:
    def __init__(self, rank: int, world_size: int, procs: list | None = None, errors=None, layout=None):
        self.rank, self.world_size, self.layout = rank, world_size, layout
        self.procs = procs or []  # the workers this process spawned (rank 0 of a local run), else none
        self.errors = errors  # a queue the spawned workers report their exceptions on
        self.failure: str | None = None
        self.cache_id = 0  # the KV cache the workers hold (they keep one: the engine's)
        self.publish_seconds = 0.0  # rank 0's time broadcasting messages: a step's share of communication
        # how errors name the run's ranks (loaded_model.py names them "attention-FFN" under AFD)
        self.label = layout.rank_label() if layout is not None else "tensor-parallel"

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    # -- rank 0 ---------------------------------------------------------------------------------------------
    def publish(self, message: tuple) -> None:
        """Send the next message to every other rank (rank 0 only)."""
        self.check()
        start = time.perf_counter()
        with self.guard():
            torch.distributed.broadcast_object_list([message], src=0, group=launch.control_group())
        self.publish_seconds += time.perf_counter() - start

    def ready(self) -> None:
        """Wait until every rank has loaded its shard (a rank that failed to load ends the run here)."""
        self.publish(("ready",))
        with self.guard():
            torch.distributed.barrier(group=launch.control_group())

    @contextlib.contextmanager
    def guard(self):
        """Turn a failed collective (a peer died or timed out) into a clear error that ends the run."""
        try:
            yield
        except RuntimeError as exc:
            if isinstance(exc, ModelchipError):
                raise
            self.fail(f"{type(exc).__name__}: {exc}")

    def watch(self, on_failure, interval: float = 0.5) -> None:
        """Call on_failure(message) from a daemon thread once a spawned worker has died or a step has failed,
        so a process that waits for requests (a server) learns of it without running a step."""
        import threading

        def loop() -> None:
            while True:
                time.sleep(interval)
                if self.failure is not None and self.failure != CLOSED:
                    return on_failure(self.failure)
                if self.failure is None and any(p.exitcode is not None for p in self.procs):
                    dead = ", ".join(_describe(i + 1, p.exitcode) for i, p in enumerate(self.procs)
                                     if p.exitcode is not None)
                    return on_failure(f"{self.label} {dead}; the run cannot continue")

        threading.Thread(target=loop, name="modelchip-tp-watchdog", daemon=True).start()

    def check(self) -> None:
        if self.failure is not None:
            raise ModelchipError(self.failure)
        dead = [(i + 1, p.exitcode) for i, p in enumerate(self.procs) if p.exitcode is not None]
        if dead:
            self.fail("")

    def fail(self, cause: str) -> None:
        """Stop every rank and raise the reason: which worker died (with its exit code and own error)."""
        deadline = time.monotonic() + 3.0  # a killed peer's sockets close before its exit code is reaped
        while self.procs and time.monotonic() < deadline and all(p.exitcode is None for p in self.procs):
            time.sleep(0.05)
        reports = []
        while self.errors is not None and not self.errors.empty():
            reports.append(self.errors.get())
        dead = [_describe(i + 1, p.exitcode) for i, p in enumerate(self.procs) if p.exitcode is not None]
        what = f"{self.label} {', '.join(dead)}" if dead else f"a {self.label} rank failed"
        message = f"{what}; the run cannot continue"
        if reports:
            message += ": " + "; ".join(reports)
        elif cause and not dead:  # a dead rank is the cause; the collective's own complaint adds nothing
            message += f" ({cause})"
        self.failure = message
        self._stop_workers(graceful=False)
        raise ModelchipError(message)

    def close(self) -> None:
        """End the run: tell the workers to stop, wait for them, leave the process group."""
        if self.rank == 0 and self.failure is None:
            self.failure = CLOSED
            with contextlib.suppress(RuntimeError):
                torch.distributed.broadcast_object_list([("stop",)], src=0, group=launch.control_group())
            self._stop_workers(graceful=True)
        elif self.rank == 0:
            self._stop_workers(graceful=False)
        else:
            launch.shutdown_group()

    def _stop_workers(self, graceful: bool) -> None:
        for p in self.procs:
            p.join(timeout=10.0 if graceful else 0.0)
            if p.exitcode is None:
                p.kill()
                p.join(timeout=5.0)
        launch.shutdown_group()

    # -- ranks > 0 ------------------------------------------------------------------------------------------
    def receive(self) -> tuple:
        box = [None]
        torch.distributed.broadcast_object_list(box, src=0, group=launch.control_group())
        return box[0]


def start(layout, device: torch.device, worker_kwargs: dict, world_size: int | None = None) -> ParallelRun | None:
    """This process's place in the run: None for a single process; else joins (torchrun, or a worker rank
    spawned by `spawn_workers`) or starts (rank 0 spawning world-1 local workers) the process group.
    `layout` (distributed/layout.py) gives the world size, unless `world_size` says it (attention-FFN disaggregation,
    whose ranks the layout does not describe); the workers get the same sizes."""
    import torch.distributed as dist

    from modelchip.runtime.distributed.layout import ParallelLayout

    world_asked = world_size or layout.world_size
    what = layout.describe() if world_size is None else f"{world_size} ranks"
    sizes = dict(tensor_parallel_size=layout.tensor_parallel_size, data_parallel_size=layout.data_parallel_size,
                 expert_parallel_size=layout.expert_parallel_size)
    env = launch.torchrun_env()
    if dist.is_available() and dist.is_initialized() and launch.control_group() is not None:
        rank, world = dist.get_rank(), dist.get_world_size()  # a worker spawned below, already connected
    elif env is not None:
        rank, world = env
        if world_asked not in (1, world):
            raise ModelchipError(f"the parallel sizes ({what}) need {world_asked} ranks, but the "
                                 f"launcher started WORLD_SIZE={world}; they must match (or leave the sizes unset)")
        if world == 1:
            return None
        launch.init_group(rank, world, device, "env://")
    elif world_asked > 1:
        return spawn_workers(world_asked, device, {**worker_kwargs, **sizes}, layout)
    else:
        return None
    if world_asked not in (1, world):
        raise ModelchipError(f"the parallel sizes ({what}) need {world_asked} ranks but the process "
                             f"group has {world}")
    if world_asked == 1:  # torchrun with no sizes given: tensor parallel over every rank
        layout = ParallelLayout(tensor_parallel_size=world)
    return ParallelRun(rank, world, layout=layout)


def spawn_workers(world: int, device: torch.device, worker_kwargs: dict, layout) -> ParallelRun:
    """Rank 0 of a run on this machine: spawn ranks 1..world-1 and meet them on 127.0.0.1 at a free port.
    The machine's threads are divided among the ranks (each compute-bound rank gets its share of cores)."""
    import torch.multiprocessing as mp

    from modelchip.runtime.distributed.worker import worker_main

    threads = max(1, torch.get_num_threads() // world)
    port = launch.free_port()
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=worker_main, daemon=True, name=f"modelchip-tp-rank{r}",
                         args=(r, world, port, {**worker_kwargs, "device": str(launch.rank_device(device, r))},
                               errors, threads))
             for r in range(1, world)]
    for p in procs:
        p.start()
    run = ParallelRun(0, world, procs, errors, layout)
    torch.set_num_threads(threads)
    try:
        launch.init_group(0, world, device, f"tcp://127.0.0.1:{port}")
    except ModelchipError as exc:
        run.fail(str(exc))
    return run
