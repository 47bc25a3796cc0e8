"""The predict-measure loop: time the runtime's decode, and predict the same run from a calibrated profile."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from modelchip.calibrate import microbench
from modelchip.calibrate.harness import WARMUP_STEPS, DecodeHarness
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.cost.profile import apply_profile
from modelchip.llm import LLM
from modelchip.spec import families

_LOADED: dict[tuple, LLM] = {}
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _llm(model: str, backend: str, device: str, dtype: str) -> LLM:
    key = (model, backend, device, dtype)
    if key not in _LOADED:
        _LOADED[key] = LLM(model, backend=backend, device=device, dtype=dtype)
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
                   progress=lambda _m: None) -> dict[int, BenchResult]:
    """Decode tokens/s at each batch size, the batches taking turns: `rounds` rounds, each timing every batch
    for steps/rounds steps. Each batch's figure is the median over rounds of each round's median step, so
    load that comes and goes on the machine for a few seconds falls on one round of every batch, and that
    round is outvoted rather than moving one batch's figure (a batch timed in one stretch has no such
    defence). A round slower than the median round by more than DISTURBED is counted as disturbed."""
    per_round = max(-(-steps // rounds), 1)
    llm = _llm(model, backend, device, dtype)
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
                t = time.perf_counter()
                h._run(1)
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


def predict(model: str, profile: str, batch: int, context: int, dtype: str = "float32") -> float:
    """Decode tokens/s the planner predicts for the same run on the calibrated profile."""
    spec = families.read(_config(model), model)
    name = DTYPE_NAMES.get(dtype, dtype)
    precision = Precision(weight=name, kv=name, compute=name)
    from modelchip.spec.chips import get_chip

    d = Deployment(chip=get_chip("h100"), chips=1, strategy="tp", batch=batch, context=context, precision=precision)
    return evaluate(model_cost(spec, precision), apply_profile(d, profile)).tokens_per_s_per_chip


def _config(model: str) -> dict:
    from modelchip.runtime.loaders.resolve import resolve

    return resolve(model).config
