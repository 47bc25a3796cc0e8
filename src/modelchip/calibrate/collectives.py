"""Measure the collectives of a process group on this machine: N ranks (this process and N-1 spawned workers,
launched and connected as a tensor-parallel run is, runtime/distributed/launch.py) sweep message sizes through
the communicator the runtime uses, and rank 0's medians are fitted to t(n) = alpha + n / bandwidth
(cost/collectives.py). The result is a profile's `collectives` section."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from modelchip.cost.collectives import COLLECTIVES, fit_alpha_beta, fit_sync_wait

SIZES = tuple(256 << (2 * i) for i in range(9))  # 256 B .. 16 MiB, x4: a decode step's messages are at the small end
ROUNDS = 9  # timed rounds per size: the median is kept
SWEEP_PASSES = 3  # whole sweeps: each point the median of its passes
WARMUP = 2
# the dtype each collective carries in the runtime: activations in bfloat16, the LM head's logits in float32
DTYPES = {"all_reduce": torch.bfloat16, "all_gather": torch.float32, "all_to_all": torch.bfloat16,
          "send_recv": torch.bfloat16, "broadcast_object": torch.uint8,
          "broadcast": torch.bfloat16}  # not swept: AFD's exchange, which sync_segments times as a closer


def synchronize(ops) -> None:
    """Wait for the device's queued work before reading the clock: the contract's `synchronize()` where the
    backend has it (an asynchronous device returns from a collective before the data moved), else nothing to
    wait for (a CPU backend's ops return when done)."""
    sync = getattr(ops, "synchronize", None) or getattr(getattr(ops, "backend", None), "synchronize", None)
    if sync is not None:
        sync()


def _calls(comm, name: str, nbytes: int, device: torch.device) -> Callable[[], object]:
    """One call of collective `name` with `nbytes` of input per rank, as the runtime makes it."""
    from modelchip.runtime.distributed import launch

    dtype = DTYPES[name]
    numel = max(1, nbytes // torch.empty((), dtype=dtype).element_size())
    n = comm.world_size
    if name == "all_to_all":
        numel = max(n, numel - numel % n)  # rows split evenly over the ranks
    x = torch.ones(numel, dtype=dtype, device=device)
    if name == "all_reduce":
        return lambda: comm.all_reduce(x)
    if name == "all_gather":
        return lambda: comm.all_gather(x, dim=-1)
    if name == "all_to_all":
        return lambda: comm.all_to_all(x)
    if name == "send_recv":
        # ping-pong between ranks 0 and 1, counted as one way (half the round trip); other ranks sit it out
        if comm.rank == 0:
            return lambda: (comm.send(x, 1), comm.recv(x, 1))
        if comm.rank == 1:
            return lambda: (comm.recv(x, 0), comm.send(x, 0))
        return lambda: None
    if name == "broadcast_object":
        # rank 0's step message (executor.ParallelRun.publish) on the control group, followed by a barrier there
        # so the time covers every rank having it (rank 0's send returns once the bytes are buffered, but a step
        # waits for the last rank to unpickle its inputs). Not less the barrier timed alone: on a busy machine
        # the difference of two noisy medians can come out at zero or below
        payload = bytes(nbytes)
        group = launch.control_group()

        def call() -> None:
            torch.distributed.broadcast_object_list([payload if comm.rank == 0 else None], src=0, group=group)
            torch.distributed.barrier(group=group)
        return call
    raise ValueError(f"unknown collective {name!r}")


def _time(call: Callable[[], object], ops, one_way: bool, rounds: int) -> float:
    """Median seconds per call over `rounds` rounds of 3 calls, each round entered together (a barrier) so
    skew between ranks does not count as collective time (`_time_in_turn` of the one call)."""
    return statistics.median(_time_in_turn([call], ops, rounds)[0]) / (2 if one_way else 1)


def _rounds(nbytes: int) -> int:
    return ROUNDS if nbytes <= 1 << 20 else 5  # large messages are steadier and slower: fewer rounds


def sweep(ops, sizes: tuple[int, ...] = SIZES, progress: Callable[[str], None] = lambda m: None,
          passes: int = SWEEP_PASSES, after_pass: Callable[[int], None] = lambda i: None) -> dict:
    """Run on every rank in step: each collective at each size, the whole sweep `passes` times over; a point's
    time is the median of its passes, so a burst of other work on the machine that lands on one pass (seconds
    long: it once took a 256-byte all-reduce from 0.4 to 1.5 ms for one collective's sweep) is outvoted rather
    than bending one collective's fit. `after_pass(i)` runs after each pass (the other measurements, spread over
    the sweep the same way). Rank 0's medians are what counts."""

    comm = ops.comm
    per_pass: dict[str, list[list[float]]] = {name: [] for name in COLLECTIVES}
    for i in range(passes):
        for name in COLLECTIVES:
            progress(f"{name} at {comm.world_size} ranks, {len(sizes)} sizes (pass {i + 1}/{passes})")
            per_pass[name].append([_time(_calls(comm, name, n, ops.device), ops, name == "send_recv", _rounds(n))
                                   for n in sizes])
        after_pass(i)
    return {name: {"dtype": str(DTYPES[name]).removeprefix("torch."), "bytes": list(sizes),
                   "seconds": _pointwise_median(runs), "passes": runs}
            for name, runs in per_pass.items()}


# one-row matmuls over distinct 1536 x 576 float32 weights (SmolLM2's MLP shape; 16 of them, 57 MB, overflow the
# caches as a decode step's weights do) between two sync points: three compute lengths to fit the wait against
SEGMENT_MATMULS = (1, 4, 16)
# a wait is a difference of three timings: more rounds than a sweep size to steady its median, in each sweep pass
SYNC_ROUNDS = 9
# collectives timed as one block in a round of the sync and exchange measurements: a decode step makes 30-60 of
# them and pays their mean, and their time has a long tail (the gloo worker thread of a rank that computed since
# the last one wakes slowly on a VM): in a 2-rank tensor-parallel decode on the 2-core VM here, an all-reduce took
# 345 us median and 718 us mean once both ranks were in it, 10% of them over 2.3 ms. A median over blocks of 3
# (the sweep's) reads the median; over blocks of 20 it reads what a step pays, and still outvotes a rare stall
SYNC_CALLS = 20


def _segment_weights(ops, g: torch.Generator) -> list[torch.Tensor]:
    """The compute segments' distinct weights (see SEGMENT_MATMULS), drawn from `g`."""
    return [torch.randn(1536, 576, generator=g).to(ops.device) for _ in range(max(SEGMENT_MATMULS))]


def sync_segments(ops, progress: Callable[[str], None] = lambda m: None, closer: str = "all_reduce") -> dict:
    """What a blocking collective costs when ranks reach it from compute, not from a barrier (cost/collectives.
    SyncWait). Every rank runs the same segments: n matmuls alone (all ranks at once, so with the contention a
    parallel step has), n matmuls closed by a small collective (`closer`: an all-reduce, as tensor parallelism
    closes its layers, an all-to-all, as expert parallelism opens its exchange, or a broadcast from rank 0, as
    attention-FFN disaggregation sends its hidden states), and that collective back to back; the wait is the
    second (rank 0's) less the other two (the first averaged over the ranks, since a step waits for whichever rank
    is slower at each sync point). The kinds wait differently: gloo's point-to-point all-to-all, reached from 2.6
    ms of one-row matmuls, took 2.5-3.0 ms on both ranks where back to back it took 0.2 ms. The three are timed in
    turn within each round, SYNC_CALLS at a time, and the wait taken per round, so load that comes and goes on the
    machine falls on all three alike (one all-reduce timing taken apart from the segments once read 2.5 ms against
    a 0.36 ms fit, and cancelled every wait). The collective back to back, per call, is also what a run of them
    costs beside the sweep's fit (SyncWait.tail_s). Run on every rank in step; rank 0's figures are what
    counts."""
    comm = ops.comm
    progress(f"{closer} after compute at {comm.world_size} ranks, {len(SEGMENT_MATMULS)} compute lengths")
    g = torch.Generator().manual_seed(0)
    weights = _segment_weights(ops, g)
    x = torch.randn(1, 576, generator=g).to(ops.device)
    # a decode token's activations; for an all-to-all, one row to each rank
    small = torch.ones(576 if closer != "all_to_all" else (comm.world_size, 576), dtype=DTYPES[closer],
                       device=ops.device)
    close = {"all_reduce": comm.all_reduce, "all_to_all": comm.all_to_all,
             "broadcast": lambda t: comm.broadcast(t, src=0)}[closer]
    compute, wait, close_alone = [], [], []
    for n in SEGMENT_MATMULS:
        def work(n=n) -> None:
            for w in weights[:n]:
                ops.linear(x, w)
        alone, synced, closed = _time_in_turn([work, lambda work=work: (work(), close(small)),
                                               lambda: close(small)], ops, SYNC_ROUNDS, SYNC_CALLS)
        # the compute a prediction charges is one rank's, not rank 0's: whichever rank happens to be slower
        # here, rank 0 waits for the slowest at each sync point, so the wait is taken beyond the ranks' mean
        alone = _mean_over_ranks(comm, alone)
        compute.append(statistics.median(alone))
        close_alone.append(statistics.median(closed))
        wait.append(max(0.0, statistics.median(s - a - c for s, a, c in zip(synced, alone, closed, strict=True))))
    issue = {"broadcast_issue_s": _issue_seconds(ops, small, weights[:4], x)} if closer == "broadcast" else {}
    return {"collective": closer, "matmuls": list(SEGMENT_MATMULS), "compute_s": compute, "wait_s": wait, **issue,
            f"{closer}_s": statistics.median(close_alone), f"{closer}_bytes": small.numel() * small.element_size(),
            "fit": dict(zip(("fixed_s", "per_compute"), _sync_fit(compute, wait), strict=True))}


def _issue_seconds(ops, msg: torch.Tensor, weights: list, x: torch.Tensor) -> float:
    """Rank 0's host time to start an asynchronous broadcast of `msg` right after a few matmuls, per call: what
    attention-FFN disaggregation's sides spend on their own cores for each message, apart from its time on the
    wire (on the 2-core VM here 50-128 us a call in this probe, 123-182 us timed inside an AFD run). Median over
    rounds of SYNC_CALLS calls' mean; the other ranks receive each broadcast."""
    comm = ops.comm
    rounds = []
    for _ in range(SYNC_ROUNDS):
        torch.distributed.barrier()
        total = 0.0
        for _ in range(SYNC_CALLS):
            for w in weights:
                ops.linear(x, w)
            if comm.rank == 0:
                t = time.perf_counter()
                handle = comm.ibroadcast(msg, 0)
                total += time.perf_counter() - t
                handle.wait()
            else:
                comm.broadcast(msg, 0)
        rounds.append(total / SYNC_CALLS)
    return statistics.median(rounds)


# rows of the compute segment a rank's rate is measured at: a decode step's matmuls run a few rows (one per
# sequence, or per expert's tokens) to tens
RANK_ROWS = (1, 4, 16, 64)


def rank_compute(ops, all_threads: int, progress: Callable[[str], None] = lambda m: None) -> dict:
    """What a rank's compute rate is against the profile's, at each of RANK_ROWS rows. The profile measures
    rates with all the machine's threads in one process; a parallel run divides them among its ranks, and how
    much a rank loses depends on the shape: on the 2-core VM here 16 one-row matmuls over 57 MB ran as fast on
    one thread as on two, 64-row ones 1.75 times slower, so 1/world_size of the profiled rate (threads / ranks)
    overcharges small-batch decode. Rank 0 times the 16-matmul segment of `sync_segments` at each row count
    three ways, in turn within each round: with `all_threads` (the machine's) while the other ranks wait in a
    barrier (`full_s`, the profile's setting), with every rank running it at once on its own threads
    (`together_s`: tensor and expert parallelism), and alone on its own threads while the others wait in a
    broadcast from it, polling as the runtime's waits do (`alone_s`: attention-FFN disaggregation's sides take
    turns). share = full / together is a rank's fraction of the profiled rate; solo = together / alone how much
    faster it computes while the others wait. Run on every rank in step; rank 0's figures are what counts."""
    comm = ops.comm
    progress(f"a rank's compute rate at {comm.world_size} ranks, {len(RANK_ROWS)} row counts")
    g = torch.Generator().manual_seed(0)
    weights = _segment_weights(ops, g)
    done = torch.zeros(1, device=ops.device)
    mine = torch.get_num_threads()
    out: dict[str, list[float]] = {"full_s": [], "together_s": [], "alone_s": []}
    for rows in RANK_ROWS:
        x = torch.randn(rows, 576, generator=g).to(ops.device)

        def work(x=x) -> float:
            t = time.perf_counter()
            for w in weights:
                ops.linear(x, w)
            synchronize(ops)
            return time.perf_counter() - t

        for _ in range(WARMUP):
            work()
        full, together, alone = [], [], []
        for _ in range(SYNC_ROUNDS):
            torch.distributed.barrier()
            if comm.rank == 0:
                torch.set_num_threads(all_threads)
                full.append(work())
                torch.set_num_threads(mine)
            torch.distributed.barrier()
            together.append(work())
            torch.distributed.barrier()
            if comm.rank == 0:
                alone.append(work())
            comm.broadcast(done, src=0)
        if comm.rank != 0:  # only rank 0 timed the other two; its figures are the ones kept
            full = alone = together
        for key, times in (("full_s", full), ("together_s", together), ("alone_s", alone)):
            out[key].append(statistics.median(times))
    return {"rows": list(RANK_ROWS), **out}


# an expert-parallel MoE layer's exchange: tokens each rank dispatches, their width and routing (random, top 2 of 4
# experts per rank); the experts themselves are taken out, so only dispatch and combine are timed
EXCHANGE_TOKENS = (1, 4, 16)
EXCHANGE_HIDDEN, EXCHANGE_TOP_K, EXCHANGE_EXPERTS_PER_RANK = 512, 2, 4


def ep_exchange(ops, progress: Callable[[str], None] = lambda m: None) -> dict:
    """Seconds of one MoE layer's expert-parallel dispatch and combine as the runtime runs them
    (runtime/distributed/expert_parallel.dispatch_combine: the four all-to-alls and the host work that sorts,
    counts and scatters the rows between them), with experts that return their rows unchanged, as DeepEP
    benchmarks its dispatch and combine apart from the experts. Summing the four all-to-alls' fits misses
    that host work and how the calls follow each other (a 2-rank exchange measured here took about twice its
    four all-to-alls timed back to back). The tokens are timed in turn within each round. Run on every rank in
    step; rank 0's figures are what counts."""
    import types

    from modelchip.runtime.distributed.expert_parallel import dispatch_combine

    comm = ops.comm
    progress(f"expert-parallel dispatch and combine at {comm.world_size} ranks, {len(EXCHANGE_TOKENS)} token counts")
    g = torch.Generator().manual_seed(comm.rank)
    experts = EXCHANGE_EXPERTS_PER_RANK * comm.world_size
    # only the exchange is timed: each expert hands its rows back as they came
    shell = types.SimpleNamespace(comm=comm, moe_experts=lambda rows, *_: rows)
    local = torch.empty(EXCHANGE_EXPERTS_PER_RANK, 1, 1, device=ops.device)  # only its expert count is read
    calls = []
    for t in EXCHANGE_TOKENS:
        x = torch.randn(t, EXCHANGE_HIDDEN, generator=g).to(device=ops.device, dtype=DTYPES["all_to_all"])
        ids = torch.stack([torch.randperm(experts, generator=g)[:EXCHANGE_TOP_K] for _ in range(t)]).to(ops.device)
        weights = torch.full((t, EXCHANGE_TOP_K), 1.0 / EXCHANGE_TOP_K, device=ops.device)
        calls.append(lambda x=x, ids=ids, w=weights: dispatch_combine(shell, x, w, ids, local, local))
    times = _time_in_turn(calls, ops, SYNC_ROUNDS, SYNC_CALLS)
    return {"tokens": list(EXCHANGE_TOKENS), "hidden": EXCHANGE_HIDDEN, "top_k": EXCHANGE_TOP_K,
            "seconds": [statistics.median(t) for t in times]}


def measure_passes(ops, sizes: tuple[int, ...], progress: Callable[[str], None] = lambda m: None,
                   passes: int = SWEEP_PASSES, all_threads: int = 1) -> tuple[dict, dict, dict, dict, dict, dict]:
    """The sweep, the three kinds of sync wait, the exchange and a rank's compute rate, each of the last five measured
    once after every sweep pass and kept as the median of its passes: they take a second or less, so measured
    once they could all land in one slow spell of a VM (an exchange once read 2.4-3.0 ms where the runs before
    and after read 0.9-1.3 ms). `all_threads`: the machine's threads, which rank 0 times its compute with once
    (rank_compute). Run on every rank in step."""
    syncs: list[dict] = []
    a2as: list[dict] = []
    casts: list[dict] = []
    exchanges: list[dict] = []
    ranks: list[dict] = []

    def after_pass(i: int) -> None:
        syncs.append(sync_segments(ops, progress))
        a2as.append(sync_segments(ops, progress, closer="all_to_all"))
        casts.append(sync_segments(ops, progress, closer="broadcast"))
        exchanges.append(ep_exchange(ops, progress))
        ranks.append(rank_compute(ops, all_threads, progress))

    raw = sweep(ops, sizes, progress, passes, after_pass)
    return (raw, _median_sync(syncs), _median_sync(a2as), _median_sync(casts), _median_exchange(exchanges),
            _median_rank(ranks))


def _median_sync(runs: list[dict]) -> dict:
    first = runs[0]
    closer = first["collective"]
    compute = _pointwise_median([r["compute_s"] for r in runs])
    wait = _pointwise_median([r["wait_s"] for r in runs])
    issue = ({"broadcast_issue_s": statistics.median(r["broadcast_issue_s"] for r in runs)}
             if "broadcast_issue_s" in first else {})
    return {"collective": closer, "matmuls": first["matmuls"], "compute_s": compute, "wait_s": wait, **issue,
            f"{closer}_s": statistics.median(r[f"{closer}_s"] for r in runs),
            f"{closer}_bytes": first[f"{closer}_bytes"], "passes": len(runs),
            "fit": dict(zip(("fixed_s", "per_compute"), _sync_fit(compute, wait), strict=True))}


def _median_exchange(runs: list[dict]) -> dict:
    return {**runs[0], "seconds": _pointwise_median([r["seconds"] for r in runs]), "passes": len(runs)}


def _median_rank(runs: list[dict]) -> dict:
    med = {key: _pointwise_median([r[key] for r in runs]) for key in ("full_s", "together_s", "alone_s")}
    return {"rows": runs[0]["rows"], **med,
            "share": [f / t for f, t in zip(med["full_s"], med["together_s"], strict=True)],
            "solo": [t / a for t, a in zip(med["together_s"], med["alone_s"], strict=True)], "passes": len(runs)}


def _pointwise_median(runs: list[list[float]]) -> list[float]:
    """Point j's median over the runs (each run a list of the same points)."""
    return [statistics.median(run[j] for run in runs) for j in range(len(runs[0]))]


def _mean_over_ranks(comm, times: list[float]) -> list[float]:
    """Each round's time averaged over the ranks (every rank calls it)."""
    t = torch.tensor(times, dtype=torch.float64)
    torch.distributed.all_reduce(t, group=comm.group)
    return (t / comm.world_size).tolist()


def _time_in_turn(calls: list[Callable[[], object]], ops, rounds: int, number: int = 3) -> list[list[float]]:
    """Seconds per call of each of `calls`, per round: every round runs `number` of each in turn, each call's
    block entered together (a barrier). Every rank runs the same rounds: a count decided by each rank's own clock
    could leave one rank waiting at a barrier the others never reach."""
    for call in calls:
        for _ in range(WARMUP):
            call()
    synchronize(ops)
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for call, out in zip(calls, times, strict=True):
            torch.distributed.barrier()
            t = time.perf_counter()
            for _ in range(number):
                call()
            synchronize(ops)
            out.append((time.perf_counter() - t) / number)
    return times


def _sync_fit(compute: list[float], wait: list[float]) -> tuple[float, float]:
    f = fit_sync_wait(compute, wait)
    return f.fixed_s, f.per_compute


def _fit(raw: dict) -> dict:
    return {name: fit_alpha_beta(r["bytes"], r["seconds"]).as_dict() for name, r in raw.items()}


def _worker(rank: int, world: int, port: int, backend: str, device: str, threads: int, errors) -> None:
    from modelchip.runtime.backends import get_backend
    from modelchip.runtime.distributed import launch

    torch.set_num_threads(threads)
    try:
        ops = get_backend(backend, str(launch.rank_device(device, rank)))
        launch.init_group(rank, world, ops.device, f"tcp://127.0.0.1:{port}")
        ops.attach_group()
        measure_passes(ops, _sizes_from_rank0())
    except BaseException as exc:  # reported to rank 0, which names the rank
        errors.put(f"rank {rank}: {type(exc).__name__}: {exc}")
        raise SystemExit(1) from exc
    finally:
        launch.shutdown_group()


def _sizes_from_rank0() -> tuple[int, ...]:
    box = [None]
    torch.distributed.broadcast_object_list(box, src=0)
    return tuple(box[0])


def measure(world_size: int, backend: str = "reference", device: str = "cpu", sizes: tuple[int, ...] = SIZES,
            progress: Callable[[str], None] = lambda m: None) -> dict:
    """The `by_world_size` entry for `world_size` ranks: raw sweep, fit, threads per rank. This process is
    rank 0; the machine's threads are divided among the ranks as in a tensor-parallel run."""
    import torch.multiprocessing as mp

    from modelchip.errors import ModelchipError
    from modelchip.runtime.backends import get_backend
    from modelchip.runtime.distributed import launch

    if world_size < 2:
        raise ModelchipError(f"collectives need at least 2 ranks, got --world-size {world_size}")
    total = torch.get_num_threads()
    threads = max(1, total // world_size)
    port = launch.free_port()
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, backend, device, threads, errors), daemon=True,
                         name=f"modelchip-calibrate-rank{r}") for r in range(1, world_size)]
    for p in procs:
        p.start()
    torch.set_num_threads(threads)
    try:
        ops = get_backend(backend, device)
        launch.init_group(0, world_size, ops.device, f"tcp://127.0.0.1:{port}")
        ops.attach_group()
        torch.distributed.broadcast_object_list([list(sizes)], src=0)
        raw, sync, sync_a2a, sync_cast, exchange, rank = measure_passes(ops, sizes, progress, all_threads=total)
    except (RuntimeError, ModelchipError) as exc:
        reports = []
        while not errors.empty():
            reports.append(errors.get())
        raise ModelchipError(f"measuring collectives at {world_size} ranks failed: "
                             f"{'; '.join(reports) or exc}") from exc
    finally:
        launch.shutdown_group()
        for p in procs:
            p.join(timeout=10.0)
            if p.exitcode is None:
                p.kill()
        torch.set_num_threads(total)
    return {"threads_per_rank": threads, "raw": raw, "fit": _fit(raw), "sync_wait": sync,
            "sync_wait_all_to_all": sync_a2a, "sync_wait_broadcast": sync_cast, "ep_exchange": exchange,
            "rank_compute": rank}


def section(world_sizes: list[int], backend: str, device: str, progress: Callable[[str], None] = lambda m: None,
            sizes: tuple[int, ...] = SIZES) -> dict:
    """A profile's `collectives` section: every world size's sweep and fits, and how ranks share the device."""
    dev = torch.device(device)
    return {"backend": backend, "device": str(dev), "process_group": "gloo" if dev.type == "cpu" else dev.type,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count() or 1, "shared_device": dev.type == "cpu",
            "timed": "rank 0, median of rounds of 3 calls (20 for the sync waits and the exchange), each round "
                     "entered together after a barrier; "
                     "send_recv is half a ping-pong between ranks 0 and 1; broadcast_object is rank 0's "
                     "broadcast_object_list on the control group followed by a barrier there (every rank has it); "
                     "sync_wait (sync_wait_all_to_all, sync_wait_broadcast): rank 0's wait at an all-reduce "
                     "(all-to-all, broadcast from rank 0) reached from n "
                     "one-row matmuls, beyond the ranks' mean time for the matmuls alone and the collective alone; "
                     "ep_exchange: the runtime's dispatch and combine of a MoE layer, experts taken out; "
                     "rank_compute: rank 0's matmul segment with all threads alone, with every rank at once, and "
                     "alone on its own threads",
            "by_world_size": {str(n): measure(n, backend, device, sizes, progress) for n in world_sizes}}
