"""Measured collectives: the alpha-beta fit of each collective a calibration timed on this machine's process
group, and the collectives a tensor-parallel decode step makes, costed with them. Reading needs no torch.

A calibration profile's `collectives` section (written by `modelchip calibrate --collectives`) holds, per world
size, the raw message-size sweep of every collective and its fit t(n) = alpha + n / bandwidth. The planner
costs the runtime's parallel steps on the profiled machine with those fits instead of a catalog link (see
`deploy.evaluate`), and with the compute share each rank gets when ranks share one device (a CPU's cores):
tensor parallelism (`tensor_parallel_step`), expert parallelism with attention replicated or data-parallel
(`expert_parallel_step`: all-to-all dispatch and combine) and attention-FFN disaggregation (`afd_step`:
send/recv of each layer's activations, scheduled by deploy._afd_pipeline). Each step function lists the calls
rank 0 makes, which tests/runtime/test_parallel_step_calls.py checks against a real run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from modelchip.cost.kernel_model import log_interp
from modelchip.errors import ModelchipError

# what the calibration times, as the runtime calls it (runtime/distributed/communicator.py, executor.py)
COLLECTIVES = ("all_reduce", "all_gather", "all_to_all", "send_recv", "broadcast_object")


@dataclass(frozen=True)
class LinkFit:
    """t(n) = alpha_s + n / bandwidth seconds for a message of n bytes (per rank's input; see COLLECTIVES)."""

    alpha_s: float
    bandwidth: float  # bytes/s; inf where the sweep showed no size dependence

    def seconds(self, nbytes: float) -> float:
        return self.alpha_s + nbytes / self.bandwidth

    def as_dict(self) -> dict:
        return {"alpha_s": self.alpha_s, "bandwidth_Bps": None if math.isinf(self.bandwidth) else self.bandwidth}


def fit_alpha_beta(sizes: Sequence[float], seconds: Sequence[float]) -> LinkFit:
    """Least-squares fit of t = alpha + n * g over the sweep, each point weighted by 1/t (relative error), so
    the latency-bound small messages a decode step sends weigh as much as the bandwidth-bound large ones (an
    unweighted fit lets the 16 MiB points decide alpha). Both terms are kept non-negative: a negative one is
    dropped and the other refitted alone."""
    if len(sizes) != len(seconds) or len(sizes) < 2:
        raise ModelchipError(f"an alpha-beta fit needs at least two (size, seconds) points, got {len(sizes)} sizes "
                             f"and {len(seconds)} times")
    if any(t <= 0 or not math.isfinite(t) for t in seconds) or any(n < 0 for n in sizes):
        raise ModelchipError("an alpha-beta fit needs positive times and non-negative sizes")
    w = [1.0 / t for t in seconds]
    # weighted normal equations of min sum (w (alpha + n g - t))^2
    s11 = sum(wi * wi for wi in w)
    s12 = sum(wi * wi * n for wi, n in zip(w, sizes, strict=True))
    s22 = sum(wi * wi * n * n for wi, n in zip(w, sizes, strict=True))
    b1 = sum(wi * wi * t for wi, t in zip(w, seconds, strict=True))
    b2 = sum(wi * wi * n * t for wi, n, t in zip(w, sizes, seconds, strict=True))
    det = s11 * s22 - s12 * s12
    alpha, g = ((s22 * b1 - s12 * b2) / det, (s11 * b2 - s12 * b1) / det) if det > 0 else (-1.0, -1.0)
    if alpha < 0 or det <= 0:
        alpha, g = 0.0, b2 / s22 if s22 > 0 else 0.0
    if g <= 0:
        alpha, g = b1 / s11, 0.0
    return LinkFit(alpha, 1.0 / g if g > 0 else math.inf)


@dataclass(frozen=True)
class SyncWait:
    """What a blocking collective costs beyond its alpha-beta time when the ranks arrive from compute rather than
    from a barrier: wait(c) = fixed_s + per_compute x c for c seconds of compute since the previous sync point.
    Ranks that each ran c seconds arrive apart (time slices, a rank whose progress thread shares a core, cache
    and bandwidth contention, one rank's extra host work), and the first to arrive waits for the last. The
    back-to-back sweep enters every round together and so never sees it. Measured by calibration
    (calibrate/collectives.py `sync_wait`: compute segments of several lengths, each closed by an all-reduce)."""

    fixed_s: float
    per_compute: float
    # what each collective of a run of them costs beyond the sweep's fit at its size: the sync measurement times
    # its collective back to back in blocks as long as a step's run of them, whose mean carries the slow calls a
    # median over the sweep's short blocks leaves out (0: not measured)
    tail_s: float = 0.0

    def at(self, compute_s: float) -> float:
        """The wait at one sync point reached after `compute_s` seconds of compute."""
        return max(0.0, self.fixed_s + self.per_compute * compute_s)


def fit_sync_wait(compute_s: Sequence[float], wait_s: Sequence[float]) -> SyncWait:
    """Least-squares line wait = fixed + per_compute x compute over the measured segments, both terms kept
    non-negative (a negative one dropped and the other refitted alone), as fit_alpha_beta does."""
    if len(compute_s) != len(wait_s) or len(compute_s) < 2:
        raise ModelchipError(f"a sync-wait fit needs at least two (compute, wait) points, got {len(compute_s)}")
    n = len(compute_s)
    mc, mw = sum(compute_s) / n, sum(wait_s) / n
    sxx = sum((c - mc) ** 2 for c in compute_s)
    slope = sum((c - mc) * (w - mw) for c, w in zip(compute_s, wait_s, strict=True)) / sxx if sxx > 0 else 0.0
    fixed = mw - slope * mc
    if slope < 0:
        slope, fixed = 0.0, mw
    if fixed < 0:
        fixed = 0.0
        slope = max(0.0, sum(c * w for c, w in zip(compute_s, wait_s, strict=True))
                    / max(sum(c * c for c in compute_s), 1e-30))
    return SyncWait(max(0.0, fixed), slope)


@dataclass(frozen=True)
class MeasuredCollectives:
    """One world size's fits from a profile, and how its ranks shared the device when they were measured."""

    world_size: int
    fits: dict[str, LinkFit]
    shared_device: bool  # ranks share one device (CPU cores): each computes at a share of the profiled rate
    threads: int  # threads the profile was calibrated with, which a run divides among its ranks
    cpus: int  # the cores the ranks' threads share
    sync_wait: SyncWait | None = None  # None: a profile from before it was measured (no wait charged)
    # (tokens each rank dispatched, seconds) of one MoE layer's expert-parallel dispatch and combine as the
    # runtime runs them (calibrate's ep_exchange); empty: not measured, the four all-to-alls' fits are summed
    ep_exchange: tuple[tuple[float, float], ...] = ()
    # the same measured for other collectives that close a compute segment, by name (an all-to-all waits
    # differently from an all-reduce); a kind not measured takes `sync_wait`
    sync_waits: tuple[tuple[str, SyncWait], ...] = ()
    # (rows, share, solo) of a rank's measured compute (calibrate's rank_compute): its rate with every rank
    # computing at once as a fraction of the profiled rate, and how much faster it runs while the others wait on
    # it; empty: not measured (the share is then its threads over the profile's)
    rank_rates: tuple[tuple[float, float, float], ...] = ()
    # host seconds rank 0 takes to start an asynchronous broadcast (calibrate's broadcast_issue_s; 0: not measured):
    # work on the issuing rank's own core, apart from the message's time on the wire
    broadcast_issue_s: float = 0.0

    def exchange_seconds(self, tokens: float) -> float:
        """One MoE layer's measured dispatch and combine with `tokens` tokens per rank: linear between the
        measured counts, the nearest count's time below the first, extended along the last two beyond."""
        pts = self.ep_exchange
        if tokens <= pts[0][0]:
            return pts[0][1]
        for (t0, s0), (t1, s1) in zip(pts, pts[1:], strict=False):
            if tokens <= t1:
                return s0 + (s1 - s0) * (tokens - t0) / (t1 - t0)
        (t0, s0), (t1, s1) = pts[-2], pts[-1]
        return s1 + max(0.0, (s1 - s0) / (t1 - t0)) * (tokens - t1)

    def wait_seconds(self, calls: list[CollectiveCall], compute_s: float) -> float:
        """The step's waiting at its sync points (every call listed is one) with `compute_s` of compute spread
        evenly between them, each at the wait measured for its kind of collective."""
        syncs = sum(c.count for c in calls)
        if self.sync_wait is None or syncs <= 0:
            return 0.0
        by_name = dict(self.sync_waits)
        return sum(c.count * by_name.get(c.name, self.sync_wait).at(compute_s / syncs) for c in calls)

    def tail_of(self, name: str) -> float:
        """Seconds each collective of kind `name` takes in a run of them beyond its fit: its own measurement's, or
        the all-reduce's for a kind without one (0 where nothing measured it)."""
        if self.sync_wait is None:
            return 0.0
        return dict(self.sync_waits).get(name, self.sync_wait).tail_s

    def tail_seconds(self, calls: list[CollectiveCall]) -> float:
        """The step's collectives' tail beyond the sweep's fit (SyncWait.tail_s, by kind as for the wait); a
        measured whole exchange (EXCHANGE_CALL) already carries its own."""
        return sum(c.count * self.tail_of(c.name) for c in calls if c.what != EXCHANGE_CALL)

    def fit(self, name: str) -> LinkFit:
        if name not in self.fits:
            raise ModelchipError(f"the profile's collectives at world size {self.world_size} have no {name!r} "
                                 f"fit (measured: {', '.join(sorted(self.fits))})")
        return self.fits[name]

    def threads_per_rank(self) -> int:
        """Threads each rank runs with: the runtime divides the machine's threads among its ranks
        (runtime/distributed/executor.spawn_workers), at least one each."""
        return max(1, self.threads // self.world_size) if self.shared_device else self.threads

    def oversubscription(self) -> float:
        """Threads the ranks run over the cores they share (>= 1): 3 single-threaded ranks on 2 cores, 1.5.
        Each thread then gets 1/oversubscription of a core, and so does each rank's host work."""
        if not self.shared_device:
            return 1.0
        return max(1.0, self.world_size * self.threads_per_rank() / self.cpus)

    def compute_share(self, rows: float = 1.0) -> float:
        """One rank's compute and bandwidth as a fraction of the profiled rates (measured with `threads`
        threads, each on a core of its own), for matmuls of `rows` rows with every rank computing at once: as
        measured (rank_rates, interpolated in log rows, the end values held beyond them), or where nothing
        measured it its threads over the profile's, each thread time-sliced when the ranks together run more
        threads than there are cores (3 ranks of 1 thread on 2 cores, profiled with 2 threads: 1 / 1.5 / 2 = a
        third each)."""
        if not self.shared_device:
            return 1.0
        if self.rank_rates:  # a rank on fewer threads is not faster than the profile's: a ratio over 1 is noise
            return min(1.0, log_interp([(r, share) for r, share, _ in self.rank_rates], rows))
        return self.threads_per_rank() / self.oversubscription() / self.threads

    def solo_speedup(self, rows: float = 1.0) -> float:
        """How much faster a rank computes `rows`-row matmuls while the other ranks wait on it than while all
        compute at once (1 where not measured); never below 1: a rank alone is not slower than beside the
        others, so a measured ratio under it is noise."""
        if not (self.shared_device and self.rank_rates):
            return 1.0
        return max(1.0, log_interp([(r, solo) for r, _, solo in self.rank_rates], rows))


def read_collectives(data: dict, world_size: int, source: str = "profile") -> MeasuredCollectives:
    """The fits measured at `world_size` in a profile's `collectives` section, or an error saying how to
    measure them."""
    section = data.get("collectives")
    how = f"modelchip calibrate --collectives --world-size {world_size}"
    if not isinstance(section, dict) or not section.get("by_world_size"):
        raise ModelchipError(f"{source} has no measured collectives; run `{how}` to add them")
    measured = section["by_world_size"].get(str(world_size))
    if measured is None:
        sizes = ", ".join(sorted(section["by_world_size"], key=int))
        raise ModelchipError(f"{source} has collectives measured at world size {sizes}, not {world_size}; run "
                             f"`{how}`")
    try:
        fits = {name: LinkFit(f["alpha_s"], f["bandwidth_Bps"] or math.inf) for name, f in measured["fit"].items()}
        sync = measured.get("sync_wait")
        exchange = measured.get("ep_exchange") or {}
        points = tuple(sorted(zip(map(float, exchange.get("tokens", ())), map(float, exchange.get("seconds", ())),
                                  strict=True)))
        if len(points) == 1:
            raise ModelchipError(f"{source}: ep_exchange needs at least two token counts")
        others = tuple((name.removeprefix("sync_wait_"), _sync_wait(v, fits))
                       for name, v in measured.items() if name.startswith("sync_wait_") and v)
        return MeasuredCollectives(world_size, fits, bool(section["shared_device"]), int(section["threads"]),
                                   int(section["cpus"]),
                                   _sync_wait(sync, fits) if sync and sync.get("fit") else None,
                                   points, others, _rank_rates(measured.get("rank_compute"), source),
                                   float((measured.get("sync_wait_broadcast") or {}).get("broadcast_issue_s", 0.0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelchipError(f"{source}: malformed collectives section ({exc!r})") from exc


def _sync_wait(section: dict, fits: dict[str, LinkFit]) -> SyncWait:
    """A sync measurement's fit, with its collective's tail: the back-to-back blocks' time per call less the
    sweep's fit (`fits`) at that size (profiles from before the size was stored have none)."""
    closer = section.get("collective", "all_reduce")
    fit = fits.get(FIT_OF.get(closer, closer))
    tail = 0.0
    if f"{closer}_bytes" in section and fit is not None:
        tail = max(0.0, float(section[f"{closer}_s"]) - fit.seconds(float(section[f"{closer}_bytes"])))
    return SyncWait(float(section["fit"]["fixed_s"]), float(section["fit"]["per_compute"]), tail)


def _rank_rates(section: dict | None, source: str) -> tuple[tuple[float, float, float], ...]:
    """A profile's rank_compute as (rows, share, solo) points, checked: a share is a fraction of the profiled
    rate (0 < share, and not far above 1), a solo ratio positive."""
    if not section:
        return ()
    points = tuple(sorted(zip(map(float, section["rows"]), map(float, section["share"]), map(float, section["solo"]),
                              strict=True)))
    for rows, share, solo in points:
        if not (rows >= 1 and 0 < share <= 2 and solo > 0 and math.isfinite(share) and math.isfinite(solo)):
            raise ModelchipError(f"{source}: rank_compute at {rows:g} rows has share {share!r} and solo {solo!r}; "
                                 f"a rank's share of the profiled rate lies in (0, 2] and its solo ratio above 0 "
                                 f"(measure again with `modelchip calibrate --collectives`)")
    return points


# A step message as pickled by the runtime's broadcast_object_list: token ids, positions, the metadata's
# query_start_loc, context_lens, slot_mapping, block table and the logit rows, int64, plus pickle's framing of
# seven tensors (about 2 KB, read off a pickled message).
STEP_MESSAGE_FRAMING_BYTES = 2000


def step_message_bytes(sequences: float, context: int, block_size: int = 16) -> float:
    return 8 * sequences * (5 + math.ceil(context / block_size)) + STEP_MESSAGE_FRAMING_BYTES


@dataclass(frozen=True)
class CollectiveCall:
    name: str  # a COLLECTIVES entry
    nbytes: float  # per rank's input, as the fit counts it
    count: float  # calls per step
    what: str


def tensor_parallel_step(layers: int, hidden: int, vocab: int, tp: int, tokens: float, logit_rows: float,
                         act_bytes: float, context: int) -> list[CollectiveCall]:
    """The collectives one decode step of the runtime's tensor-parallel decoder makes on each rank (docs/
    parallel.md): rank 0 broadcasts the step's inputs; the vocabulary-parallel embedding all-reduces [T, H];
    each layer all-reduces [T, H] after o_proj and after down_proj; the LM head all-gathers each rank's
    float32 logits of its ceil(V / tp) vocabulary rows."""
    if tp <= 1:
        return []
    act = tokens * hidden * act_bytes
    return [CollectiveCall("broadcast_object", step_message_bytes(logit_rows, context), 1, "step inputs"),
            CollectiveCall("all_reduce", act, 1, "embedding"),
            CollectiveCall("all_reduce", act, 2 * layers, "o_proj and down_proj"),
            CollectiveCall("all_gather", logit_rows * math.ceil(vocab / tp) * 4.0, 1, "logits")]


def expert_parallel_step(moe_layers: int, hidden: int, top_k: int, ep: int, tokens: float, logit_rows: float,
                         act_bytes: float, context: int, data_parallel: bool = False) -> list[CollectiveCall]:
    """The collectives one decode step of the runtime's expert-parallel MoE makes on rank 0 (runtime/distributed/
    expert_parallel.py, docs/parallel.md), `tokens` being the step's tokens over all ranks.

    Every MoE layer: 4 all-to-alls, the row counts (one int64 per rank), the dispatched rows (a token's hidden
    state once per chosen expert), their experts' local ids (int64), and the combine sending each result back
    (as many rows as the rank received: top_k per token under even routing). Attention replicated (EP alone):
    rank 0 dispatches its ceil(T / M) chunk of the tokens and all-gathers the chunks' results [ceil(T / M), H]
    after the combine. Data-parallel attention (DP M + EP M): rank 0 dispatches its own sequences' tokens and
    there is no all-gather in the layer, but the rows needing logits are all-gathered once per step,
    [ceil(R / M), H] from each rank. Both: rank 0 broadcasts the step's inputs; nothing else is communicated
    (attention, dense layers and shared experts are whole on every rank)."""
    if ep <= 1:
        return []
    mine = math.ceil(tokens / ep)  # rank 0's chunk, or its own sequences' tokens (balanced)
    rows = mine * top_k
    calls = [CollectiveCall("broadcast_object", step_message_bytes(logit_rows, context), 1, "step inputs"),
             CollectiveCall("all_to_all", 8.0 * ep, moe_layers, "row counts"),
             CollectiveCall("all_to_all", rows * hidden * act_bytes, moe_layers, "dispatch"),
             CollectiveCall("all_to_all", rows * 8.0, moe_layers, "expert ids"),
             CollectiveCall("all_to_all", rows * hidden * act_bytes, moe_layers, "combine")]
    if data_parallel:
        return calls + [CollectiveCall("all_gather", math.ceil(logit_rows / ep) * hidden * act_bytes, 1,
                                       "rows needing logits")]
    return calls + [CollectiveCall("all_gather", mine * hidden * act_bytes, moe_layers, "chunks' results")]


EXCHANGE_CALLS = ("row counts", "dispatch", "expert ids", "combine")  # expert_parallel_step's per-layer exchange
# the sweep's fit a sync measurement's closer is costed with where the sweep does not time it: AFD's broadcasts of
# activations are priced as messages (deploy._afd_pipeline)
FIT_OF = {"broadcast": "send_recv"}
EXCHANGE_CALL = "dispatch and combine"  # the four as one measured exchange (expert_parallel_seconds)


def expert_parallel_seconds(calls: list[CollectiveCall], measured: MeasuredCollectives, moe_layers: int,
                            tokens_per_rank: float) -> tuple[float, float, list[CollectiveCall]]:
    """(latency, transfer, sync points) of an expert-parallel step's collectives. Where the profile measured the
    runtime's whole dispatch and combine (`ep_exchange`), each MoE layer costs that, in place of its four
    all-to-alls' fits, and is one sync point (ranks reach its first all-to-all from their compute; the calls
    inside it follow each other as measured); the other calls cost their fits."""
    if not measured.ep_exchange:
        return *step_seconds(calls, measured), calls
    rest = [c for c in calls if not (c.name == "all_to_all" and c.what in EXCHANGE_CALLS)]
    latency, transfer = step_seconds(rest, measured)
    latency += moe_layers * measured.exchange_seconds(tokens_per_rank)
    return latency, transfer, [*rest, CollectiveCall("all_to_all", 0.0, moe_layers, EXCHANGE_CALL)]


@dataclass(frozen=True)
class AFDStep:
    """The collectives of one AFD decode step, by where they sit in the runtime's schedule (runtime/distributed/
    afd.py): `step` rank 0's once a step (the step broadcast; with A > 1 tensor parallelism's embedding
    all-reduce and logits all-gather); `attention` the attention ranks' inside the layers (A > 1: the o_proj
    all-reduce of every layer and micro-batch); `to_ffn` rank 0's sends of hidden states (F per layer and
    micro-batch) and `from_ffn` its receives of FFN outputs (one per layer and micro-batch; the FFN leader sends
    one to each attention rank); `ffn` an FFN rank's all-reduces among the FFN ranks (F > 1)."""

    step: list[CollectiveCall]
    attention: list[CollectiveCall]
    to_ffn: CollectiveCall
    from_ffn: CollectiveCall
    ffn: list[CollectiveCall]

    def calls(self) -> list[CollectiveCall]:
        """Attention rank 0's calls of the whole step (what a counting communicator on rank 0 sees)."""
        return [*self.step, *self.attention, self.to_ffn, self.from_ffn]


def afd_step(layers: int, hidden: int, vocab: int, attention_ranks: int, ffn_ranks: int, micro_batches: int,
             tokens: float, logit_rows: float, act_bytes: float, context: int, shared_experts: bool = False,
             moe_layers: int = 0) -> AFDStep:
    """Attention-FFN disaggregation's collectives per decode step (docs/parallel.md). The step's sequences are
    split into `micro_batches` micro-batches of about tokens / micro_batches tokens; per layer and micro-batch
    attention rank 0 sends [n, H] to each of the F FFN ranks and the FFN leader sends [n, H] back to each of the
    A attention ranks (send_recv: one message each; the runtime sends each direction as one broadcast, which
    on gloo is the source's message to each member). Attention ranks with A > 1 are one tensor-parallel group
    (embedding all-reduce and logits all-gather per step, o_proj all-reduce per layer and micro-batch); FFN ranks
    with F > 1 all-reduce each micro-batch's FFN output among themselves (twice in a MoE layer with shared
    experts: the experts' shares, then the shared expert's tensor-parallel sum)."""
    a, f, m = attention_ranks, ffn_ranks, micro_batches
    n = tokens / m
    msg = n * hidden * act_bytes
    step = [CollectiveCall("broadcast_object", step_message_bytes(logit_rows, context), 1, "step inputs")]
    attention = []
    if a > 1:
        step += [CollectiveCall("all_reduce", tokens * hidden * act_bytes, 1, "embedding"),
                 CollectiveCall("all_gather", logit_rows * math.ceil(vocab / a) * 4.0, 1, "logits")]
        attention = [CollectiveCall("all_reduce", msg, layers * m, "o_proj")]
    ffn = []
    if f > 1:
        per_layer = layers + (moe_layers if shared_experts else 0)
        ffn = [CollectiveCall("all_reduce", msg, per_layer * m, "FFN output among the FFN ranks")]
    return AFDStep(step, attention, CollectiveCall("send_recv", msg, layers * m * f, "hidden states to the FFN ranks"),
                   CollectiveCall("send_recv", msg, layers * m, "FFN output from the FFN leader"), ffn)


def step_seconds(calls: list[CollectiveCall], measured: MeasuredCollectives) -> tuple[float, float]:
    """(latency, transfer) seconds of a step's collectives: sum of count * alpha, and of count * bytes / bandwidth."""
    latency = sum(c.count * measured.fit(c.name).alpha_s for c in calls)
    transfer = sum(c.count * c.nbytes / measured.fit(c.name).bandwidth for c in calls)
    return latency, transfer


def for_deployment(strategy: str, chips: int, path, runtime_layout: bool = False) -> MeasuredCollectives | None:
    """The profile's collectives a deployment needs: a tensor-parallel one over several chips, or one of the
    runtime's expert-parallel or AFD layouts (`runtime_layout`, Deployment.attention set), needs those measured
    at its world size (an error says how to measure them); anything else none."""
    import json
    from pathlib import Path

    if chips <= 1 or (strategy != "tp" and not runtime_layout):
        return None
    return read_collectives(json.loads(Path(path).read_text()), chips, str(path))
