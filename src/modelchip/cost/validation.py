"""Predict every published measured deployment (spec/catalog/deployments.toml) and tabulate the error, twice:
in-sample (the whole catalog) and leave-one-source-out (each source's points predicted from a catalog whose
measured kernel, link and efficiency figures from that source, and from the publications it names as its own,
are left out).

Errors are signed as predicted speed over measured speed less one, for rates and times alike: +20% means the
model is 20% too fast (throughput too high, or TTFT/TPOT too low).
"""

from __future__ import annotations

import statistics
import tomllib
from functools import cache
from importlib import resources

from modelchip.cost import serving
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, best_batch_for_slo, evaluate
from modelchip.cost.efficiency import defaults
from modelchip.cost.model_cost import model_cost
from modelchip.cost.systems import system_for
from modelchip.errors import ModelchipError
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip

# what a point's `metric` names -> (quantity predicted, whether it is a time)
METRICS = {
    "output tokens/s per chip": ("out_per_chip", False),
    "output tokens/s in total": ("out_total", False),
    "input tokens/s per chip": ("in_per_chip", False),
    "output tokens/s per user": ("per_user", False),
    "TTFT ms": ("ttft_ms", True),
    "TPOT ms": ("tpot_ms", True),
}
LATENCY_BOUND_BATCH = 16  # sequences per chip at or below which a step is set by weights and fixed costs


@cache
def points() -> dict:
    return tomllib.loads(resources.files("modelchip.spec").joinpath("catalog", "deployments.toml").read_text())


def sources() -> dict[str, dict]:
    return {s["id"]: s for s in points().get("source", [])}


def excluded_for(point: dict) -> frozenset[str]:
    """Catalog source ids left out when this point is predicted out of sample: its own source and the
    publications its source lists as the same team's measurements of the same systems."""
    src = sources().get(point["source_id"], {})
    return frozenset({point["source_id"], *src.get("related", [])})


def acceptance(point: dict) -> float:
    """Per-draft acceptance rate r: given, or solved from a published mean accepted length
    (1 + r + ... + r^k tokens per step for k drafts)."""
    if "mtp_acceptance" in point:
        return float(point["mtp_acceptance"])
    length, k = point.get("accept_length"), point.get("mtp", 0)
    if not length or not k:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(mid ** i for i in range(k + 1)) < length else (lo, mid)
    return lo


def deployment(p: dict, exclude: frozenset[str] = frozenset()) -> tuple:
    precision = Precision(weight=p.get("weight_dtype", "fp8"), kv=p.get("kv_dtype", "bf16"),
                          attention_weight=p.get("attention_weight_dtype", ""), compute=p.get("compute_dtype", "auto"),
                          lm_head_weight=p.get("lm_head_weight_dtype", ""),
                          ffn_down_weight=p.get("ffn_down_weight_dtype", ""))
    cost = model_cost(load_model(p["model"]), precision)
    chip = get_chip(p["chip"])
    d = Deployment(chip=chip, chips=p["chips"], strategy=p["strategy"], batch=p.get("batch", 1),
                   context=p.get("context", 1), phase="prefill" if p["phase"] == "prefill" else "decode",
                   prompt_len=p.get("prompt_len", 0), cached_prefix=p.get("cached_prefix", 0),
                   attn_chips=p.get("attn_chips", 0), ffn_chips=p.get("ffn_chips", 0),
                   precision=precision, mtp=p.get("mtp", 0), mtp_acceptance=acceptance(p),
                   redundant_experts=p.get("redundant_experts", 0), system=system_for(chip, p.get("system")),
                   graphs=p.get("graphs", True), exclude=exclude, moe_balance=p.get("moe_balance", "eplb"),
                   engine=p.get("engine", ""), kv_free_fraction=p.get("kv_free_memory_fraction", 0.0),
                   weight_offload=p.get("weight_offload", False),
                   efficiency=defaults(exclude))
    return cost, d


def predict_point(p: dict, exclude: frozenset[str] = frozenset()) -> float:
    """The point's metric as the model predicts it (0 when the setup is infeasible)."""
    quantity, _ = METRICS[p["metric"]]
    cost, d = deployment(p, exclude)
    if p["phase"] == "serve":
        max_batch = p.get("max_batch", serving.ENGINE_MAX_BATCH)
        if "tpot_slo_ms" in p:  # MLPerf Server/Interactive: the highest load within the latency bounds
            s = serving.serve_under_slo(cost, d, p["prompt_len"], p["output_len"], p["tpot_slo_ms"],
                                        p.get("ttft_slo_ms", 0), max_batch=max_batch)
        else:
            s = serving.serve(cost, d, p["prompt_len"], p["output_len"], concurrency=p.get("concurrency", 0),
                              request_rate=p.get("request_rate", 0), max_batch=max_batch,
                              requests=p.get("num_requests", 0))
        if not s.feasible:
            return 0.0
        values = {"out_per_chip": s.output_tokens_per_s_per_chip, "per_user": 1e3 / s.tpot_ms,
                  "out_total": s.output_tokens_per_s * p.get("replicas", 1), "ttft_ms": s.ttft_ms,
                  "tpot_ms": s.tpot_ms}
        return values[quantity]
    pred = best_batch_for_slo(cost, d, p["tpot_slo_ms"]) if "tpot_slo_ms" in p else evaluate(cost, d)
    if not pred.feasible:
        return 0.0
    per_chip = pred.tokens_per_s_per_chip
    values = {"out_per_chip": per_chip, "in_per_chip": per_chip, "out_total": per_chip * d.chips,
              "per_user": 1e3 / pred.tpot_ms if pred.tpot_ms else 0.0, "ttft_ms": pred.ttft_ms, "tpot_ms": pred.tpot_ms}
    return values[quantity]


def _safe(p: dict, exclude: frozenset[str]) -> tuple[float, str]:
    """The prediction, or 0 with the model's reason where it finds the setup infeasible (kept as a miss)."""
    try:
        return predict_point(p, exclude), ""
    except ModelchipError as exc:
        return 0.0, f"the model finds the published setup infeasible: {exc}"


def _error(p: dict, predicted: float) -> float:
    if not predicted:
        return -1.0
    is_time = METRICS[p["metric"]][1]
    return p["measured"] / predicted - 1 if is_time else predicted / p["measured"] - 1


def regime(p: dict) -> str:
    """latency-bound when a chip holds few sequences per step, else throughput-bound."""
    if p["phase"] == "prefill":
        return "prefill"
    per_chip = p.get("batch")
    if per_chip is None and p.get("concurrency"):
        per_chip = p["concurrency"] / p["chips"]
    bound = "latency" if per_chip is not None and per_chip <= LATENCY_BOUND_BATCH else "throughput"
    return f"{p['phase']}/{bound}"


def _summary(errors: list[float]) -> dict:
    a = [abs(e) for e in errors]
    return {"count": len(a), "median_abs_error": statistics.median(a) if a else 0.0,
            "max_abs_error": max(a, default=0.0), "within_30": sum(e <= 0.30 for e in a),
            "share_within_30": sum(e <= 0.30 for e in a) / len(a) if a else 0.0}


def run() -> dict:
    rows = []
    for p in points()["point"]:
        if p["metric"] not in METRICS:
            raise ModelchipError(f"deployments.toml {p['id']}: unknown metric {p['metric']!r}; "
                                 f"known: {', '.join(METRICS)}")
        predicted, note = _safe(p, frozenset())
        loso, _ = _safe(p, excluded_for(p))
        rows.append({"id": p["id"], "source_id": p["source_id"], "source": p["source"], "chip": p["chip"],
                     "regime": regime(p), "metric": p["metric"], "measured": p["measured"],
                     "predicted": predicted, "error": _error(p, predicted),
                     "loso_predicted": loso, "loso_error": _error(p, loso), "assumed": p.get("assumed", ""),
                     "missing": p.get("missing", "") or note})
    groups: dict[str, dict[str, list]] = {"source": {}, "regime": {}, "chip": {}}
    for r in rows:
        for key in groups:
            groups[key].setdefault(r[key if key != "source" else "source_id"], []).append(r)
    return {"rows": rows, "skipped": points().get("skipped", []),
            "in_sample": _summary([r["error"] for r in rows]),
            "leave_one_source_out": _summary([r["loso_error"] for r in rows]),
            "by": {key: {k: {"in_sample": _summary([r["error"] for r in v]),
                             "leave_one_source_out": _summary([r["loso_error"] for r in v])}
                         for k, v in sorted(g.items())} for key, g in groups.items()},
            "count": len(rows), "sources": len(groups["source"]), "chips": len(groups["chip"])}


def _fmt(value: float, metric: str) -> str:
    return f"{value:,.1f}" if METRICS[metric][1] or value < 100 else f"{value:,.0f}"


def markdown(result: dict) -> str:
    lines = ["| point | chip | regime | setup (source) | metric | measured | predicted | error | LOSO error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        setup = r["source"] + (f"; assumed: {r['assumed']}" if r["assumed"] else "")
        if r["missing"]:
            setup += f"; **missing mechanism**: {r['missing']}"
        lines.append(f"| {r['id']} | {r['chip']} | {r['regime']} | {setup} | {r['metric']} "
                     f"| {_fmt(r['measured'], r['metric'])} | {_fmt(r['predicted'], r['metric'])} "
                     f"| {100 * r['error']:+.1f}% | {100 * r['loso_error']:+.1f}% |")
    ins, loso = result["in_sample"], result["leave_one_source_out"]
    lines += ["", f"{ins['count']} points from {result['sources']} sources on {result['chips']} chips.", "",
              "| errors | median abs | largest abs | within 30% |", "|---|---|---|---|",
              _summary_row("in-sample", ins), _summary_row("leave-one-source-out", loso), ""]
    for key, title in (("regime", "regime"), ("source", "source"), ("chip", "chip")):
        lines += [f"| {title} | points | median abs (in-sample) | median abs (LOSO) | within 30% (LOSO) |",
                  "|---|---|---|---|---|"]
        for name, s in result["by"][key].items():
            i, o = s["in_sample"], s["leave_one_source_out"]
            lines.append(f"| {name} | {i['count']} | {100 * i['median_abs_error']:.1f}% "
                         f"| {100 * o['median_abs_error']:.1f}% | {o['within_30']} of {o['count']} |")
        lines.append("")
    for s in result["skipped"]:
        lines.append(f"- not predicted: {s['id']}: {s['reason']}")
    return "\n".join(lines).rstrip() + "\n"


def _summary_row(name: str, s: dict) -> str:
    return (f"| {name} | {100 * s['median_abs_error']:.1f}% | {100 * s['max_abs_error']:.1f}% "
            f"| {s['within_30']} of {s['count']} ({100 * s['share_within_30']:.0f}%) |")

