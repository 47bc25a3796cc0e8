"""Predict every published measured deployment (spec/catalog/deployments.toml) and tabulate the error."""

from __future__ import annotations

import statistics
import tomllib
from dataclasses import replace
from functools import cache
from importlib import resources

from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, best_batch_for_slo, evaluate, max_batch_by_memory
from modelchip.cost.model_cost import ModelCost, model_cost
from modelchip.cost.systems import system_for
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip

ENGINE_MAX_BATCH = 2048  # sequences an engine schedules at once when the source does not say


@cache
def points() -> dict:
    return tomllib.loads(resources.files("modelchip.spec").joinpath("catalog", "deployments.toml").read_text())


def serving_throughput(cost: ModelCost, d: Deployment, prompt: int, output: int, instance_batch: int = 0) -> float:
    """Output tokens/s of the whole deployment at steady load: each sequence is prefilled once and then
    decoded for `output` steps at a mean context of prompt + output / 2."""
    if instance_batch:
        b = max(1, instance_batch // d.chips)
    else:
        b = min(max_batch_by_memory(cost, replace(d, context=prompt + output)), ENGINE_MAX_BATCH // d.chips)
    decode = evaluate(cost, replace(d, batch=b, context=prompt + output // 2))
    prefill = evaluate(cost, replace(d, batch=b, phase="prefill", prompt_len=prompt))
    seconds = output * decode.tpot_ms / 1e3 + prefill.ttft_ms / 1e3
    return b * d.chips * output / seconds


def predict_point(p: dict) -> float:
    precision = Precision(weight="fp8", kv=p.get("kv_dtype", "bf16"))
    cost = model_cost(load_model(p["model"]), precision)
    chip = get_chip(p["chip"])
    d = Deployment(chip=chip, chips=p["chips"], strategy=p["strategy"], batch=p.get("batch", 1),
                   context=p.get("context", 1), phase="prefill" if p["phase"] == "prefill" else "decode",
                   prompt_len=p.get("prompt_len", 0), cached_prefix=p.get("cached_prefix", 0),
                   precision=precision, mtp=p.get("mtp", 0),
                   mtp_acceptance=p.get("mtp_acceptance", 0.0), redundant_experts=p.get("redundant_experts", 0),
                   system=system_for(chip), graphs=p.get("graphs", True))
    if p["phase"] == "serve":
        return serving_throughput(cost, d, p["prompt_len"], p["output_len"], p.get("instance_batch", 0))
    pred = best_batch_for_slo(cost, d, p["tpot_slo_ms"]) if "tpot_slo_ms" in p else evaluate(cost, d)
    return pred.tokens_per_s_per_chip if pred.feasible else 0.0


def run() -> dict:
    rows = []
    for p in points()["point"]:
        predicted = predict_point(p)
        rows.append({"id": p["id"], "source": p["source"], "metric": p["metric"], "measured": p["measured"],
                     "predicted": predicted, "error": predicted / p["measured"] - 1, "assumed": p.get("assumed", "")})
    errors = [abs(r["error"]) for r in rows]
    return {"rows": rows, "skipped": points().get("skipped", []),
            "median_abs_error": statistics.median(errors), "max_abs_error": max(errors),
            "within_30": sum(e <= 0.30 for e in errors), "count": len(rows)}


def markdown(result: dict) -> str:
    lines = ["| point | setup (source) | metric | predicted | measured | error |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        setup = r["source"] + (f"; assumed: {r['assumed']}" if r["assumed"] else "")
        lines.append(f"| {r['id']} | {setup} | {r['metric']} | {r['predicted']:,.0f} | {r['measured']:,.0f} "
                     f"| {100 * r['error']:+.1f}% |")
    lines.append("")
    lines.append(f"Median absolute error {100 * result['median_abs_error']:.1f}%, largest "
                 f"{100 * result['max_abs_error']:.1f}%, {result['within_30']} of {result['count']} within 30%.")
    for s in result["skipped"]:
        lines.append(f"- not predicted: {s['id']}: {s['reason']}")
    return "\n".join(lines)
