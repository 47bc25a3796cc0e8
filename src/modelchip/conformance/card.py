"""The conformance card: a Markdown page a vendor can publish, and the one-line failures a CI log needs."""

from __future__ import annotations

from modelchip.conformance.runner import Report
from modelchip.conformance.tolerances import ATOL_K, RTOL


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}" if x else "0"


def _ok(passed: bool) -> str:
    return "pass" if passed else "**FAIL**"


def markdown(report: Report) -> str:
    r = report
    lines = [f"# Conformance card: `{r.backend}` on `{r.device}`", "",
             f"modelchip {r.modelchip_version}, backend contract v{r.contract_version}, torch {r.torch_version}; "
             f"dtypes {', '.join(r.dtypes)}; {r.seconds:.1f} s", "",
             f"**Result: {'PASS' if r.passed else 'FAIL'}** ({len(r.ops)} op checks, {len(r.families)} model "
             f"checks, {len(r.accuracy)} accuracy checks, {len(r.failures)} failed)", "",
             f"Native ops: {', '.join(r.native_ops) or 'none'}. "
             f"Run on the reference backend instead (fallback): {', '.join(r.missing_ops) or 'none'}.", ""]
    if r.notes:
        lines += [f"Note: {n}." for n in r.notes] + [""]
    if r.failures:
        lines += ["## Failures", ""] + [f"- {f}" for f in r.failures] + [""]
    lines += ["## Ops", "",
              "Each output against float64 math on the same inputs; passes when |out - ref| <= atol + rtol*|ref| "
              "everywhere (ratio = worst error / allowed). rtol per dtype: "
              + ", ".join(f"{str(k).removeprefix('torch.')} {v:g}" for k, v in RTOL.items())
              + "; atol = k * rtol * max|ref| with k per op: " + ", ".join(f"{k} {v:g}" for k, v in ATOL_K.items())
              + ". Gathers and cache writes must be exact; router ids and greedy ids must be a valid top-k/argmax "
                "(ties either way); sampling frequencies within 5 sigma.", ""]
    for op in dict.fromkeys(o.op for o in r.ops):
        rows = [o for o in r.ops if o.op == op]
        lines += [f"### {op} ({'native' if rows[0].native else 'fallback: reference'})", "",
                  "| dtype | case | shape | max abs err | ratio | tolerance | result |",
                  "|---|---|---|---|---|---|---|"]
        for o in rows:
            result = _ok(o.passed) + (f": {o.detail}" if o.detail else "")
            lines.append(f"| {o.dtype} | {o.case} | `{o.shape}` | {_num(o.max_abs_err)} | "
                         f"{'-' if o.ratio is None else f'{o.ratio:.3f}'} | {o.tolerance} | {result} |")
        lines.append("")
    if r.families:
        lines += ["## Model families", "",
                  "Tiny random 2-layer models; a chunked prefill, a mixed prefill step and 7 batched decode steps "
                  "through the paged KV cache (block size 4, shuffled blocks), against the reference backend on "
                  "CPU in the same dtype with the same weights. Greedy tokens: the backend's own "
                  "picks, fed the reference's tokens; a different pick counts as a tie when its reference logit is "
                  "within twice the tolerance of the best. Rows named with a parallel layout (`tp2`, `ep2`, "
                  "`dp2+ep2`, `afd1+1 mb2`: A attention + F FFN ranks, M micro-batches) run that many processes "
                  "on this backend and its communicator against this backend in one process: the one-shot "
                  "logits of each prompt, a batched prefill and decode step, and greedy generation.", "",
                  "| family | dtype | max logit err | tolerance | greedy tokens | result |",
                  "|---|---|---|---|---|---|"]
        for f in r.families:
            tokens = f"{f.tokens_matched}/{f.tokens_total}" + (f" (+{f.ties} ties)" if f.ties else "")
            result = _ok(f.passed) + (f": {f.detail}" if f.detail else "")
            lines.append(f"| {f.family} | {f.dtype} | {_num(f.max_abs_err)} | {f.tolerance:g} | {tokens} | {result} |")
        fused = [f"{f.family} {f.dtype}" for f in r.families if getattr(f, "fused", False)]
        if fused:  # these rows checked the backend's fused stack, not its ops one by one
            lines += ["", "Decoder layers ran as the backend's own fused stack (`fuse_decoder_layers`) in: "
                      + ", ".join(fused) + "."]
        lines.append("")
    lines += _accuracy(r)
    lines += ["## Fallbacks", "", "| op | calls in op checks | calls in model runs |", "|---|---|---|"]
    for op in r.missing_ops:
        lines.append(f"| {op} | {r.fallback_calls.get('op checks', {}).get(op, 0)} | "
                     f"{r.fallback_calls.get('model runs', {}).get(op, 0)} |")
    if not r.missing_ops:
        lines.append("| (none) | 0 | 0 |")
    if r.backend_fallbacks:
        lines += ["", "Reported by the backend itself (ops it implements but handed to a slower path): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(r.backend_fallbacks.items()))]
    return "\n".join(lines) + "\n"


def _accuracy(r: Report) -> list[str]:
    if not r.accuracy:
        return ["## Accuracy", "", "Not run (`modelchip conformance --accuracy` runs it).", ""]
    lines = ["## Accuracy", "",
             "The kit's two lm-eval tasks (modelchip/conformance/eval_tasks.py: 16 multiple-choice questions scored "
             "by log-likelihood, 8 short answers generated greedily) on a real model, through lm-eval's evaluator, "
             "on this backend and on the reference backend (CPU) in the same dtype. Passes when every request's "
             "log-likelihood agrees within the tolerance and each task's score is equal; identical generations are "
             "counted, not required (half precision may break a near-tie either way).", "",
             "| model | dtype | metric | this backend | reference | log-likelihoods | max err | tolerance | "
             "generations equal | result |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in r.accuracy:
        result = _ok(a.passed) + (f": {a.detail}" if a.detail else "")
        for i, (metric, ref) in enumerate(a.reference.items()):
            tail = (f"{a.requests} | {_num(a.max_ll_err)} | {a.tolerance} | {a.generations_equal}/{a.generations} | "
                    f"{result}" if i == 0 else " | ".join([""] * 5))
            lines.append(f"| {a.model} | {a.dtype} | {metric} | {a.backend.get(metric, float('nan')):.4f} | "
                         f"{ref:.4f} | {tail} |")
    return lines + [""]
