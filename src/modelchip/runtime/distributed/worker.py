"""What ranks > 0 do: load their shard of the model, then run every step rank 0 broadcasts until told to stop."""

from __future__ import annotations

import sys

import torch


def worker_main(rank: int, world: int, port: int, kwargs: dict, errors, threads: int) -> None:
    """Entry point of a spawned worker rank (executor.spawn_workers). Its exception goes to rank 0's queue."""
    from modelchip.runtime.distributed import launch
    from modelchip.runtime.loaded_model import LoadedModel

    torch.set_num_threads(threads)
    try:
        launch.init_group(rank, world, torch.device(kwargs.get("device", "cpu")), f"tcp://127.0.0.1:{port}")
        loaded = LoadedModel(**kwargs)  # kwargs carry the run's parallel sizes
        serve_steps(loaded)
    except BaseException as exc:  # report anything, even KeyboardInterrupt, then exit non-zero
        errors.put(f"rank {rank}: {type(exc).__name__}: {exc}")
        sys.exit(1)
    finally:
        launch.shutdown_group()


@torch.inference_mode()
def serve_steps(loaded) -> None:
    """Ranks > 0 of a parallel run: hold a KV cache shard and run each step rank 0 sends, until 'stop'."""
    from modelchip.runtime.distributed import afd, launch

    run = loaded.parallel
    cache = None

    def make_cache(*args) -> None:
        nonlocal cache
        cache = loaded.make_cache(*args)

    handlers = {"cache": make_cache, "step": lambda *args: loaded.forward_step(*args, cache=cache),
                "logits": loaded.logits}
    if afd.is_ffn_rank(loaded):  # attention-FFN disaggregation: an FFN rank serves the attention ranks
        handlers = afd.ffn_handlers(loaded)
    while True:
        kind, *args = run.receive()
        if kind == "stop":
            return
        if kind == "ready":
            torch.distributed.barrier(group=launch.control_group())
        elif kind in handlers:
            handlers[kind](*args)
        else:
            raise RuntimeError(f"unknown message {kind!r} from rank 0")
