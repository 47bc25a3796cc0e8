"""Serving mode: a deployment under a load of requests with `input_len` prompt and `output_len` output tokens,
as engine benchmarks (vLLM's benchmark_serving, trtllm-bench, SGLang's bench_serving) and MLPerf's
Offline/Server scenarios measure it: throughput, TTFT and TPOT at a concurrency or a request rate.

The engine keeps `concurrency` requests in flight per instance (or as many as fit, capped at the engine's
batch limit). In steady state every request is prefilled once, and the prefill's forward pass samples its first
output token (vLLM, SGLang and TensorRT-LLM alike: gptSession runs `maxNewTokens` steps, the context step
first), so it is decoded for `output_len - 1` more steps. For the whole in-flight cohort one round costs its
prefill plus `output_len - 1` decode steps at the mean context (input + output / 2); a request's TPOT is its
decode step plus its share of the prefills that interrupt it (the cohort's prefill spread over its
`output_len - 1` gaps between tokens, as benchmarks count TPOT: (latency - TTFT) / (output_len - 1)), and its
TTFT is its own prompt's prefill plus the decode step it waits behind. A request rate is turned into a
concurrency by Little's law.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from modelchip.cost import kernel_model as km
from modelchip.cost.deploy import Deployment, Prediction, evaluate, max_batch_by_memory
from modelchip.cost.model_cost import ModelCost
from modelchip.errors import ModelchipError

ENGINE_MAX_BATCH = 2048  # sequences an engine schedules at once when nothing else is said (TensorRT-LLM's default)


@dataclass
class ServingPrediction:
    feasible: bool
    reason: str
    concurrency: float  # requests in flight in the whole deployment
    batch_per_chip: float
    output_tokens_per_s: float  # whole deployment
    output_tokens_per_s_per_chip: float
    input_tokens_per_s_per_chip: float
    requests_per_s: float
    ttft_ms: float
    tpot_ms: float
    decode: Prediction
    prefill: Prediction

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("decode", "prefill")}
        out["decode_breakdown_ms"] = self.decode.breakdown_ms
        out["prefill_breakdown_ms"] = self.prefill.breakdown_ms
        return out


def _sequences_per_chip(d: Deployment) -> int:
    """Chips a sequence's batch is counted on: every chip for tp and ep, the attention chips under afd."""
    return d.attn_chips if d.strategy == "afd" else d.chips


def serve(cost: ModelCost, d: Deployment, input_len: int, output_len: int, concurrency: float = 0,
          request_rate: float = 0, max_batch: int = ENGINE_MAX_BATCH, fit: int | None = None,
          requests: int = 0) -> ServingPrediction:
    """Steady-state serving of the deployment; see the module docstring. `concurrency` and `request_rate`
    count the whole deployment; with neither, the engine fills memory (maximum-load throughput). `fit`: the
    sequences per chip that fit in memory, where the caller has it (a search reuses it across batches).
    `requests`: the run's whole number of requests where it is finite and published (0: unbounded); with all of
    them in flight at once the load is that many, however many more would fit."""
    if input_len < 1 or output_len < 1:
        raise ModelchipError("serving needs positive --input-len and --output-len")
    if concurrency < 0 or request_rate < 0:
        raise ModelchipError("--concurrency and --request-rate must be positive")
    if concurrency and request_rate:
        raise ModelchipError("give --concurrency or --request-rate, not both")
    per = _sequences_per_chip(d)
    if d.strategy == "ep":  # aggregated serving: data-parallel attention ranks get uneven prefill and decode work
        balance = km.fixed("dp_attention_balance", ("aggregated",), d.exclude)
        d = replace(d, attention_balance=balance or 1.0)
    if fit is None:
        fit = memory_fit(cost, d, input_len, output_len)
    if fit == 0:
        p = evaluate(cost, replace(d, batch=1, context=input_len + output_len, cached_prefix=0))
        raise ModelchipError(f"the weights alone do not fit: {p.reason}")
    cap = _load_cap(cost, d, input_len, output_len, fit, max_batch)
    if requests:  # a finite run (trtllm-bench's dataset, a burst of prompts) never has more requests in flight
        cap = min(cap, requests / per)

    firsts: dict[float, Prediction] = {}  # one prompt's prefill (TTFT), the same for every batch of 1 or more
    # one prompt on the instance: under tp every chip holds 1/tp of it (batch 1 per chip would be tp prompts);
    # a data-parallel attention rank prefills it alone
    one_prompt = 1.0 / d.chips if d.strategy == "tp" else 1.0

    def at(batch: float) -> ServingPrediction:
        # a prefix cache spares prompt tokens' prefill only; the decode step still reads their KV cache
        dec = evaluate(cost, replace(d, phase="decode", batch=batch, context=input_len + output_len // 2,
                                     cached_prefix=0))
        pre = evaluate(cost, replace(d, phase="prefill", batch=batch, prompt_len=input_len))
        first = min(batch, one_prompt)
        if first not in firsts:
            firsts[first] = evaluate(cost, replace(d, phase="prefill", batch=first, prompt_len=input_len))
        one = firsts[first]
        step, prefill = dec.tpot_ms, pre.ttft_ms
        decodes = output_len - 1  # the prefill step samples the first token
        tpot = step + prefill / max(decodes, 1)  # one-token requests have no gap: the nominal step and prefill
        in_flight = batch * per
        out_tps = in_flight * output_len / ((prefill + decodes * step) / 1e3)
        ok = dec.feasible and pre.feasible
        return ServingPrediction(ok, dec.reason or pre.reason, in_flight, batch, out_tps, out_tps / d.chips,
                                 out_tps * input_len / output_len / d.chips, out_tps / output_len,
                                 one.ttft_ms + step, tpot, dec, pre)

    if concurrency:
        batch = concurrency / per
        if batch > cap:
            raise ModelchipError(f"concurrency {concurrency:g} needs {batch:.1f} sequences per chip; "
                                 f"{cap:g} fit (memory or the engine's batch limit)")
        return at(batch)
    if not request_rate:
        return at(cap)
    batch = 1.0 / per  # Little's law: in flight = rate x time in system, iterated to its fixed point
    for _ in range(60):
        p = at(batch)
        want = request_rate * (p.ttft_ms + (output_len - 1) * p.tpot_ms) / 1e3 / per
        if want > cap:
            raise ModelchipError(f"{request_rate:g} requests/s is beyond this deployment's capacity "
                                 f"({at(cap).requests_per_s:.2f} requests/s at {cap:g} sequences per chip)")
        if abs(want - batch) < 1e-3 * max(batch, 1e-3):
            break
        batch = max(want, 1.0 / per)
    return at(batch)


def _load_cap(cost: ModelCost, d: Deployment, input_len: int, output_len: int, fit: int, max_batch: int) -> float:
    """Most sequences per chip the engine keeps in flight: the memory fit, capped at the engine's batch limit.
    Under tp an instance's chips each hold 1/tp of every sequence, so the instance holds whole sequences, not
    whole sequences per chip: `fit` (whole per chip) is refined to the most instance sequences that fit, and the
    engine's limit (per instance) is divided exactly (TP8 holding 11 sequences of 32K tokens is 11/8 per chip)."""
    if d.strategy != "tp" or d.chips == 1:
        return float(min(fit, max_batch))
    tp = d.chips
    whole = replace(d, phase="decode", context=input_len + output_len, cached_prefix=0)
    lo, hi = fit * tp, (fit + 1) * tp  # lo sequences fit, hi do not (fit + 1 per chip does not)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if evaluate(cost, replace(whole, batch=mid / tp)).feasible else (lo, mid)
    return min(lo, max_batch) / tp


def memory_fit(cost: ModelCost, d: Deployment, input_len: int, output_len: int) -> int:
    """Sequences per chip whose KV cache for a whole request (input + output tokens) fits beside the weights."""
    return max_batch_by_memory(cost, replace(d, phase="decode", context=input_len + output_len, cached_prefix=0))


def serve_under_slo(cost: ModelCost, d: Deployment, input_len: int, output_len: int, tpot_ms: float,
                    ttft_ms: float = 0, max_batch: int = ENGINE_MAX_BATCH) -> ServingPrediction:
    """The highest load a deployment serves with its TPOT (and TTFT, where given) within the bounds, as MLPerf's
    Server and Interactive scenarios measure it: the largest concurrency (sequences per chip, continuous) whose
    predicted TPOT and TTFT stay within `tpot_ms` and `ttft_ms`. The model's TPOT and TTFT are means; MLPerf bounds
    the 99th percentile, so a prediction here errs fast by the tail's spread."""
    if tpot_ms <= 0 or ttft_ms < 0:
        raise ModelchipError("the TPOT bound must be positive and the TTFT bound not negative")
    per = _sequences_per_chip(d)
    fit = memory_fit(cost, d, input_len, output_len)
    if fit == 0:
        return serve(cost, d, input_len, output_len, fit=fit)  # raises: the weights do not fit
    cap = _load_cap(cost, d, input_len, output_len, fit, max_batch)

    def ok(s: ServingPrediction) -> bool:
        return s.tpot_ms <= tpot_ms and (not ttft_ms or s.ttft_ms <= ttft_ms)

    def at(batch: float) -> ServingPrediction:
        return serve(cost, d, input_len, output_len, concurrency=batch * per, max_batch=max_batch, fit=fit)

    lo_batch = 1.0 / per
    first = at(lo_batch)
    if not ok(first):
        first.feasible = False
        first.reason = (f"misses the bounds at one request in flight: TPOT {first.tpot_ms:.1f} ms (bound {tpot_ms:g}), "
                        f"TTFT {first.ttft_ms:.1f} ms (bound {ttft_ms:g})")
        return first
    top = at(cap)
    if ok(top):
        return top
    lo, hi = lo_batch, cap
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(at(mid)) else (lo, mid)
        if hi - lo < 1e-3 * hi:
            break
    return at(lo)
