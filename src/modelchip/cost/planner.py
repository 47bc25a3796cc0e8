"""Search deployments: chips x chip counts x strategies (x AFD splits) x batch sizes, under TPOT/TTFT
targets; keep the best per objective, the throughput-vs-TPOT Pareto frontier, and why each option lost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from modelchip.cost import serving
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import ModelCost
from modelchip.errors import ModelchipError

BATCHES = tuple(sorted({int(round(1.5 ** i)) for i in range(0, 23)} | {2 ** i for i in range(13)}))
AFD_RATIOS = ((1, 1), (2, 1), (3, 1), (1, 2))


@dataclass
class Candidate:
    kv_dtype: str
    chip: str
    chips: int
    strategy: str
    attn_chips: int
    ffn_chips: int
    batch: int
    tpot_ms: float
    ttft_ms: float | None
    tokens_per_s_per_chip: float
    usd_per_mtok: float | None
    memory_gb_per_chip: float
    breakdown_ms: dict = field(repr=False)

    @property
    def label(self) -> str:
        split = f" {self.attn_chips}A{self.ffn_chips}F" if self.strategy == "afd" else ""
        return f"{self.chips} x {self.chip} {self.strategy}{split}, KV {self.kv_dtype}"


@dataclass
class PlanResult:
    evaluated: int
    feasible: list[Candidate]
    best: Candidate | None
    pareto: list[Candidate]
    rejected: dict[str, int]
    examples: dict[str, str]
    best_per_config: list[Candidate]


def _configs(base: list[Deployment]) -> list[Deployment]:
    out = []
    for d in base:
        if d.strategy != "afd":
            out.append(d)
            continue
        for a, f in AFD_RATIOS:
            if d.chips % (a + f) == 0:
                unit = d.chips // (a + f)
                out.append(replace(d, attn_chips=a * unit, ffn_chips=f * unit))
    return out


def plan(cost: ModelCost, base: list[Deployment], tpot_slo_ms: float | None, ttft_slo_ms: float | None = None,
         prompt_len: int = 0, objective: str = "throughput", cached_prefix: int = 0,
         serve: tuple[int, int] | None = None) -> PlanResult:
    """Evaluate every configuration at every batch size in BATCHES; see PlanResult. TTFT is one `prompt_len`
    prompt's prefill, of which `cached_prefix` tokens come from a prefix cache. With `serve` = (input, output)
    tokens per request, each batch is a serving load (cost/serving.py): TPOT and TTFT are the stream's, with
    prefills mixed in, and throughput counts output tokens."""
    if serve:
        return _plan_serving(cost, base, tpot_slo_ms, ttft_slo_ms, objective, *serve)
    if objective not in ("throughput", "cost"):
        raise ModelchipError("objective must be 'throughput' or 'cost'")
    feasible, rejected, examples, per_config = [], Counter(), {}, []
    evaluated = 0

    def reject(reason: str, d: Deployment, detail: str) -> None:
        rejected[reason] += 1
        examples.setdefault(reason, f"{d.chips} x {d.chip.id} {d.strategy} batch {d.batch}: {detail}")

    for d in _configs(base):
        ttft = None
        if prompt_len:
            try:
                pre = evaluate(cost, replace(d, phase="prefill", prompt_len=prompt_len, cached_prefix=cached_prefix,
                                             batch=1))
                ttft = pre.ttft_ms if pre.feasible else None
            except ModelchipError:
                ttft = None
        best_here = None
        for b in BATCHES:
            evaluated += 1
            at_b = d.but(batch=b)
            try:
                p = evaluate(cost, at_b)
            except ModelchipError as exc:
                reject("invalid", d, str(exc))
                break
            if not p.feasible:
                reject("memory", at_b, p.reason)
                break  # larger batches need more memory still
            if tpot_slo_ms and p.tpot_ms > tpot_slo_ms:
                reject("tpot", at_b, f"TPOT {p.tpot_ms:.1f} ms > {tpot_slo_ms} ms")
                continue
            if ttft_slo_ms and (ttft is None or ttft > ttft_slo_ms):
                reject("ttft", at_b, f"TTFT {ttft if ttft is None else round(ttft, 1)} ms")
                continue
            c = Candidate(d.precision.kv, d.chip.id, d.chips, d.strategy, d.attn_chips, d.ffn_chips, b, p.tpot_ms, ttft,
                          p.tokens_per_s_per_chip, p.usd_per_mtok, p.memory_gb_per_chip, p.breakdown_ms)
            feasible.append(c)
            best_here = _better(c, best_here, objective)
        if best_here:
            per_config.append(best_here)
    return _result(evaluated, feasible, rejected, examples, per_config, objective)


def _better(c: Candidate, best: Candidate | None, objective: str) -> Candidate:
    return c if best is None or _score(c, objective) > _score(best, objective) else best


def _result(evaluated: int, feasible: list[Candidate], rejected: Counter, examples: dict, per_config: list,
            objective: str) -> PlanResult:
    best = max(feasible, key=lambda c: _score(c, objective), default=None)
    return PlanResult(evaluated, feasible, best, pareto_frontier(feasible), dict(rejected), examples,
                      sorted(per_config, key=lambda c: -_score(c, objective)))


def merge(results: list[PlanResult], objective: str = "throughput") -> PlanResult:
    """One result from searches over separately costed spaces (e.g. one per KV format)."""
    feasible = [c for r in results for c in r.feasible]
    rejected: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for r in results:
        rejected.update(r.rejected)
        for k, v in r.examples.items():
            examples.setdefault(k, v)
    per_config = sorted((c for r in results for c in r.best_per_config), key=lambda c: -_score(c, objective))
    best = max(feasible, key=lambda c: _score(c, objective), default=None)
    return PlanResult(sum(r.evaluated for r in results), feasible, best, pareto_frontier(feasible), dict(rejected),
                      examples, per_config)


def _score(c: Candidate, objective: str) -> float:
    if objective == "cost":
        return -(c.usd_per_mtok if c.usd_per_mtok is not None else float("inf"))
    return c.tokens_per_s_per_chip


def pareto_frontier(points: list[Candidate]) -> list[Candidate]:
    """Points no other point beats on both lower TPOT and higher tokens/s per chip."""
    frontier, best = [], -1.0
    for c in sorted(points, key=lambda c: (c.tpot_ms, -c.tokens_per_s_per_chip)):
        if c.tokens_per_s_per_chip > best:
            frontier.append(c)
            best = c.tokens_per_s_per_chip
    return frontier


def _plan_serving(cost: ModelCost, base: list[Deployment], tpot_slo_ms: float | None, ttft_slo_ms: float | None,
                  objective: str, input_len: int, output_len: int) -> PlanResult:
    feasible, rejected, examples, per_config = [], Counter(), {}, []
    evaluated = 0
    for d in _configs(base):
        best_here = None
        try:
            fit = serving.memory_fit(cost, d, input_len, output_len)
        except ModelchipError as exc:
            rejected["invalid"] += 1
            examples.setdefault("invalid", f"{d.chips} x {d.chip.id} {d.strategy}: {exc}")
            continue
        per = d.attn_chips if d.strategy == "afd" else d.chips
        for b in BATCHES:
            evaluated += 1
            if b > fit:
                rejected["memory"] += 1
                examples.setdefault("memory", f"{d.chips} x {d.chip.id} {d.strategy} batch {b}: {fit} sequences "
                                              f"of {input_len + output_len} tokens fit per chip")
                break
            try:
                s = serving.serve(cost, d, input_len, output_len, concurrency=b * per, fit=fit)
            except ModelchipError as exc:  # beyond the engine's batch limit
                rejected["memory"] += 1
                examples.setdefault("memory", f"{d.chips} x {d.chip.id} {d.strategy} batch {b}: {exc}")
                break
            if tpot_slo_ms and s.tpot_ms > tpot_slo_ms:
                rejected["tpot"] += 1
                examples.setdefault("tpot", f"{d.chips} x {d.chip.id} {d.strategy} batch {b}: TPOT {s.tpot_ms:.1f} ms")
                continue
            if ttft_slo_ms and s.ttft_ms > ttft_slo_ms:
                rejected["ttft"] += 1
                examples.setdefault("ttft", f"{d.chips} x {d.chip.id} {d.strategy} batch {b}: TTFT {s.ttft_ms:.1f} ms")
                continue
            price = d.chip.usd_per_hour
            usd = price / 3600 / s.output_tokens_per_s_per_chip * 1e6 if price else None
            c = Candidate(d.precision.kv, d.chip.id, d.chips, d.strategy, d.attn_chips, d.ffn_chips, b, s.tpot_ms,
                          s.ttft_ms, s.output_tokens_per_s_per_chip, usd, s.decode.memory_gb_per_chip,
                          s.decode.breakdown_ms)
            feasible.append(c)
            best_here = _better(c, best_here, objective)
        if best_here:
            per_config.append(best_here)
    return _result(evaluated, feasible, rejected, examples, per_config, objective)
