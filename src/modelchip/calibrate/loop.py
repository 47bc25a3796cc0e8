"""The predict-measure loop: time the runtime's decode, and predict the same run from a calibrated profile."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass

from modelchip.calibrate import microbench
from modelchip.calibrate.harness import WARMUP_STEPS, DecodeHarness, steps_needed
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.cost.profile import apply_profile
from modelchip.llm import LLM
from modelchip.spec import families

_LOADED: dict[tuple, LLM] = {}
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _llm(model: str, backend: str, device: str, dtype: str, quantization: str | None = None) -> LLM:
    key = (model, backend, device, dtype, quantization)
    if key not in _LOADED:
        _LOADED[key] = LLM(model, backend=backend, device=device, dtype=dtype, quantization=quantization)
    return _LOADED[key]


@dataclass(frozen=True)
class BenchResult:
    tokens_per_s: float
    context: float  # mean context length over the timed steps (what a prediction should be asked for)
    round_spread: float  # interquartile range / median of the rounds' step times: load that came and went
    disturbed_rounds: int  # rounds slower than the median round by more than DISTURBED (not counted)
    rounds: int


# A round whose median step is this much slower than the median round ran while other work took the cores.
DISTURBED = 0.15


def measure_rounds(model: str, batches: list[int], context: int, steps: int, rounds: int = 4,
                   backend: str = "reference", device: str = "cpu", dtype: str = "float32",
                   quantization: str | None = None, progress=lambda _m: None) -> dict[int, BenchResult]:
    """Decode tokens/s at each batch size, the batches taking turns: `rounds` rounds, each timing every batch
    for steps/rounds steps. Each batch's figure is the median over rounds of each round's median step, so
    load that comes and goes on the machine for a few seconds falls on one round of every batch, and that
    round is outvoted rather than moving one batch's figure (a batch timed in one stretch has no such
    defence). A round slower than the median round by more than DISTURBED is counted as disturbed."""
    per_round = max(-(-steps // rounds), 1)
    llm = _llm(model, backend, device, dtype, quantization)
    harnesses = {}
    for b in batches:
        progress(f"prefill batch {b} ({context} tokens each)")
        h = DecodeHarness(llm.model, b, context, WARMUP_STEPS + rounds * (per_round + 1))
        h.prefill()
        harnesses[b] = h
    for h in harnesses.values():
        for _ in range(WARMUP_STEPS):
            h._run(1)
    medians: dict[int, list[float]] = {b: [] for b in batches}
    for r in range(rounds):
        progress(f"round {r + 1} of {rounds}")
        order = batches[r % len(batches):] + batches[:r % len(batches)]  # no batch always first after another
        for b in order:
            h = harnesses[b]
            h._run(1)  # one untimed step: the caches now hold this batch's weights and KV, not the last one's
            times = []
            for _ in range(per_round):
                h.ops.synchronize()  # every timing starts and ends with the device idle (contract v2)
                t = time.perf_counter()
                h._run(1)
                h.ops.synchronize()
                times.append(time.perf_counter() - t)
            medians[b].append(statistics.median(times))
    mean_context = context + WARMUP_STEPS + rounds * (per_round + 1) / 2
    return {b: summarize(b, m, mean_context) for b, m in medians.items()}


def summarize(batch: int, round_medians: list[float], context: float) -> BenchResult:
    """One batch's figure from its rounds' median step times: the median round, and the rounds that ran
    disturbed (slower than it by more than DISTURBED)."""
    mid = statistics.median(round_medians)
    return BenchResult(batch / mid, context, microbench.spread(round_medians),
                       sum(t > mid * (1 + DISTURBED) for t in round_medians), len(round_medians))


def run_precision(model: str, backend: str = "reference", device: str = "cpu", dtype: str = "float32",
                  quantization: str | None = None) -> tuple[Precision, list[str]]:
    """The number formats of the run `measure_rounds` times, as the planner names them: the activations' and KV
    cache's dtype, and the formats its linear weights were kept in (a GGUF file's packed blocks, or the float
    dtype of those loaded unpacked: the FFN's format by weight count, the attention projections' and the LM
    head's where they differ), with a note where a part mixes formats the planner prices as one."""
    name = DTYPE_NAMES.get(dtype, dtype)
    attn, ffn, head = Counter(), Counter(), ""
    for weight, (fmt, count) in _llm(model, backend, device, dtype, quantization).weight_formats.items():
        fmt = DTYPE_NAMES.get(fmt, fmt)
        if weight == "lm_head":
            head = fmt
        else:
            (attn if ".self_attn." in weight else ffn)[fmt] += count
    weight = (ffn or attn or Counter([name])).most_common(1)[0][0]
    attention = attn.most_common(1)[0][0] if attn else weight
    said = [f"{part} weights mix {', '.join(f'{n:,} {f}' for f, n in c.items())}: priced as {c.most_common(1)[0][0]}"
            for part, c in (("attention", attn), ("FFN", ffn)) if len(c) > 1]
    return Precision(weight=weight, kv=name, compute=name, attention_weight="" if attention == weight else attention,
                     lm_head_weight=head), said


def predict(model: str, profile: str, batch: int, context: int, dtype: str = "float32",
            precision: Precision | None = None) -> float:
    """Decode tokens/s the planner predicts for the same run on the calibrated profile (`precision`: the run's
    formats, from `run_precision`; default all weights in `dtype`)."""
    spec = families.read(_config(model), model)
    name = DTYPE_NAMES.get(dtype, dtype)
    precision = precision or Precision(weight=name, kv=name, compute=name)
    from modelchip.spec.chips import get_chip

    d = Deployment(chip=get_chip("h100"), chips=1, strategy="tp", batch=batch, context=context, precision=precision)
    return evaluate(model_cost(spec, precision), apply_profile(d, profile)).tokens_per_s_per_chip


def profile_notes(profile: str, precision: Precision) -> list[str]:
    """What the profile says about pricing these formats (a packed format it did not measure, ...)."""
    from modelchip.cost import streaming

    return streaming.from_profile(profile, precision)[1]


def _config(model: str) -> dict:
    from modelchip.runtime.loaders.resolve import resolve

    return resolve(model).config


@dataclass(frozen=True)
class BenchLayout:
    """One parallel layout `modelchip bench` runs and predicts: "tp" N ranks, "ep" M ranks (attention
    replicated), "dp+ep" M ranks (data-parallel attention, expert-parallel MoE), "afd" `size` attention and
    `ffn_ranks` FFN ranks. Size 1 (tp or ep) is one process."""

    kind: str
    size: int
    ffn_ranks: int = 0
    micro_batches: int = 2

    @property
    def world_size(self) -> int:
        return self.size + self.ffn_ranks

    @property
    def label(self) -> str:
        if self.world_size == 1:
            return "1 process"
        if self.kind == "afd":
            return f"afd {self.size}+{self.ffn_ranks} ({self.micro_batches} micro-batches)"
        return f"{self.kind} {self.size}"

    def llm_kwargs(self) -> dict:
        if self.world_size == 1:
            return {}
        return {"tp": {"tensor_parallel_size": self.size}, "ep": {"expert_parallel_size": self.size},
                "dp+ep": {"expert_parallel_size": self.size, "data_parallel_size": self.size},
                "afd": {"afd": (self.size, self.ffn_ranks), "afd_micro_batches": self.micro_batches}}[self.kind]

    def deployment(self, batch: int, context: int, precision: Precision) -> Deployment:
        """The planner's description of this run: per-chip batch and the runtime's attention layout."""
        from modelchip.spec.chips import get_chip

        base = dict(chip=get_chip("h100"), context=context, precision=precision)
        n = self.size
        if self.world_size == 1 or self.kind == "tp":
            return Deployment(chips=n, strategy="tp", batch=batch / n, **base)
        if self.kind == "ep":  # every rank attends every sequence
            return Deployment(chips=n, strategy="ep", batch=batch, attention="replicated", **base)
        if self.kind == "dp+ep":  # rank 0 attends its own sequences: ceil(B / M) of them (harness.py spreads them)
            return Deployment(chips=n, strategy="ep", batch=-(-batch // n), attention="data-parallel", **base)
        return Deployment(chips=self.world_size, strategy="afd", attn_chips=n, ffn_chips=self.ffn_ranks,
                          batch=batch / n, attention="tensor-parallel", microbatches=self.micro_batches, **base)


def measure_parallel(model: str, layout: BenchLayout | int, batches: list[int], context: int, steps: int,
                     backend: str = "reference", device: str = "cpu", dtype: str = "float32",
                     quantization: str | None = None, progress=lambda m: None) -> list[dict]:
    """Median decode step seconds, and rank 0's median seconds per step inside collectives (the model's and the
    step broadcast; under AFD also waiting for the FFN ranks' outputs), at each batch, for the model run in
    `layout` (an int: that many tensor-parallel ranks; 1: one process, through the same engine path). The run
    is closed before returning."""
    from modelchip.calibrate import microbench
    from modelchip.calibrate.harness import EngineHarness

    if isinstance(layout, int):
        layout = BenchLayout("tp", layout)
    llm = LLM(model, backend=backend, device=device, dtype=dtype, quantization=quantization, **layout.llm_kwargs())
    rows = []
    try:
        for batch in batches:
            progress(f"{layout.label}, batch {batch}")
            h = EngineHarness(llm, batch, context, steps_needed(steps))
            h.prefill()
            name = f"bench {layout.label} batch {batch}"
            blocked = _blocked_waits(llm)
            seconds = h.time_decode(steps, name=name)
            timing = microbench.take_log()[name]
            rows.append({"batch": batch, "step_s": seconds, "comm_s": h.comm_per_step, "spread": timing.spread,
                         "attempts": timing.attempts, "blocked_waits": _blocked_waits(llm) - blocked})
            progress(f"{layout.label}, batch {batch}: {seconds * 1e3:.1f} ms a step, "
                     f"{h.comm_per_step * 1e3:.1f} ms in collectives")
    finally:
        llm.close()
    return rows


def _blocked_waits(llm) -> int:
    """Rank 0's collective waits so far that outlasted the communicator's polling budget and blocked
    (docs/parallel.md, "Waiting on a collective"); 0 for a communicator that does not count them."""
    afd = getattr(llm, "afd", None)
    comms = [llm.ops.comm] + ([afd.p2p, afd.to_ffn, afd.from_ffn] if afd is not None else [])
    return sum(getattr(c, "blocked_waits", 0) for c in comms if c is not None)


def predict_parallel(model: str, profile: str, layout: BenchLayout | int, batch: int, context: int,
                     dtype: str = "float32"):
    """The planner's Prediction of one decode step of `batch` sequences run in `layout` (an int: that many
    tensor-parallel ranks) on this machine, from the profile (its collectives measured at the layout's world
    size when that is above 1)."""
    if isinstance(layout, int):
        layout = BenchLayout("tp", layout)
    spec = families.read(_config(model), model)
    name = DTYPE_NAMES.get(dtype, dtype)
    precision = Precision(weight=name, kv=name, compute=name)
    d = apply_profile(layout.deployment(batch, context, precision), profile)
    return evaluate(model_cost(spec, precision), d)
