"""Run the whole conformance suite for one backend on one device: the op grid, every model family, the
fallback counts and, when asked, the accuracy step on a real model, collected into a Report (rendered by
modelchip.conformance.card)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch

import modelchip
from modelchip.conformance import op_cases, tiny_models
from modelchip.conformance.accuracy import AccuracyResult, check_accuracy
from modelchip.conformance.checks import run_case
from modelchip.conformance.family_check import FamilyResult, check_family
from modelchip.errors import ModelchipError
from modelchip.runtime.backends import get_backend
from modelchip.runtime.contract import CONTRACT_VERSION, OPS
from modelchip.runtime.distributed.afd import DEFAULT_MICRO_BATCHES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class OpResult:
    op: str
    dtype: str
    case: str
    shape: str
    native: bool  # False: the backend lacks the op and the reference ran it
    passed: bool
    max_abs_err: float | None
    ratio: float | None
    tolerance: str
    detail: str
    seconds: float

    def failure(self) -> str:
        return f"op {self.op} [{self.case}] {self.shape} {self.dtype}: {self.detail}"


@dataclass
class Report:
    backend: str
    device: str
    dtypes: list[str]
    contract_version: int = CONTRACT_VERSION
    modelchip_version: str = modelchip.__version__
    torch_version: str = torch.__version__
    native_ops: list[str] = field(default_factory=list)
    quantized_formats: list[str] = field(default_factory=list)  # formats its linear takes packed
    missing_ops: list[str] = field(default_factory=list)
    ops: list[OpResult] = field(default_factory=list)
    families: list[FamilyResult] = field(default_factory=list)
    fallback_calls: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> op -> calls
    backend_fallbacks: dict[str, int] = field(default_factory=dict)  # what the backend itself reports
    accuracy: list[AccuracyResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the kit checked differently for this backend, and why
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        out = [r.failure() for r in self.ops if not r.passed]
        out += [f"family {f.family} {f.dtype}: {f.detail}" for f in self.families if not f.passed]
        out += [f"accuracy {a.model} {a.dtype}: {a.detail}" for a in self.accuracy if not a.passed]
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        data = asdict(self)
        data["passed"], data["failures"] = self.passed, self.failures
        return data


def parse_dtypes(names: list[str]) -> list[torch.dtype]:
    bad = [n for n in names if n not in DTYPES]
    if bad:
        raise ModelchipError(f"unsupported dtype {bad[0]!r}; choose from float32, bfloat16, float16")
    return list(dict.fromkeys(DTYPES[n] for n in names))


def run(backend: str, device: str = "cpu", dtypes: list[str] | None = None, ops: list[str] | None = None,
        families: list[str] | None = None, tensor_parallel: int = 1, accuracy_model: str | None = None,
        expert_parallel: int = 1, afd: tuple[int, int] | None = None,
        afd_micro_batches: int = DEFAULT_MICRO_BATCHES) -> Report:
    """Check `backend` on `device` (default dtypes: float32, bfloat16, float16; default: every op and family).
    With tensor_parallel N > 1, also "parallel equals single" for every family over N tensor-parallel ranks;
    with expert_parallel M > 1, for the MoE families over M expert-parallel ranks (attention replicated) and
    over M data-parallel attention + expert-parallel ranks; with afd (A, F), for every family over A attention
    and F FFN ranks (attention-FFN disaggregation, `afd_micro_batches` micro-batches a step); with
    `accuracy_model` (e.g. "smollm2-135m"), also the accuracy step on that model in each dtype."""
    start = time.perf_counter()
    wanted = parse_dtypes(dtypes or ["float32", "bfloat16", "float16"])
    ops = ops if ops is not None else list(OPS)
    families = families if families is not None else list(tiny_models.CONFIGS)
    for op in ops:
        if op not in OPS:
            raise ModelchipError(f"unknown op {op!r}; contract ops: {', '.join(OPS)}")
    for fam in families:
        if fam not in tiny_models.CONFIGS:
            raise ModelchipError(f"unknown family {fam!r}; families: {', '.join(tiny_models.CONFIGS)}")
    from modelchip.conformance.parallel_check import applies, check_afd, check_afd_sizes, check_parallel

    # refused before anything runs: a bad size would otherwise surface only after the op grid
    afd_config = check_afd_sizes(families, afd, afd_micro_batches) if afd is not None else None
    bound = get_backend(backend, device)
    report = Report(backend, str(bound.device), [str(d).removeprefix("torch.") for d in wanted],
                    native_ops=bound.native_ops, missing_ops=[o for o in OPS if o not in bound.native_ops],
                    quantized_formats=sorted(bound.quantized_formats) if "linear" in bound.native_ops else [])
    # quantized linear cases check the backend's own linear: none when linear falls back to the reference
    quantized = bound.quantized_formats if "linear" in bound.native_ops else frozenset()
    if bound.owns_kv_layout and "write_kv" in ops:
        # the kit cannot read a cache laid out as only the backend knows: write_kv is checked by every
        # paged_attention case (each writes all slots through it, garbage included) and by the model runs
        ops = [o for o in ops if o != "write_kv"]
        report.notes.append("own KV cache layout (allocate_kv_cache): write_kv checked through the "
                            "paged_attention cases and the model runs, not alone")
    for case in op_cases.grid(wanted, ops, bound.prepares_weights, quantized):
        t = time.perf_counter()
        v = run_case(bound, case, bound.device)
        report.ops.append(OpResult(case.op, str(case.dtype).removeprefix("torch."), case.label, case.shape,
                                   case.op in bound.native_ops, v.passed, v.max_abs_err, v.ratio, v.tolerance,
                                   v.detail, time.perf_counter() - t))
    after_ops = Counter(bound.fallbacks)
    for fam in families:
        for dt in wanted:
            report.families.append(check_family(bound, fam, dt))
    for layout, size in (("tp", tensor_parallel), ("ep", expert_parallel), ("dp+ep", expert_parallel)):
        for fam in [f for f in families if size > 1 and applies(f, layout, size)]:
            for dt in wanted:
                report.families.append(check_parallel(backend, device, fam, dt, size, layout))
    for fam in families if afd_config is not None else []:
        for dt in wanted:
            report.families.append(check_afd(backend, device, fam, dt, afd_config))
    report.fallback_calls = {"op checks": dict(after_ops), "model runs": dict(Counter(bound.fallbacks) - after_ops)}
    own = getattr(bound.backend, "fallbacks", None)  # optional: a backend's count of its own internal fallbacks
    if isinstance(own, dict):
        report.backend_fallbacks = {str(k): int(v) for k, v in own.items()}
    if accuracy_model is not None:
        for dt in wanted:
            report.accuracy.append(check_accuracy(backend, device, str(dt).removeprefix("torch."), accuracy_model))
    report.seconds = time.perf_counter() - start
    return report
