"""The predict-measure loop: time the runtime's decode, and predict the same run from a calibrated profile."""

from __future__ import annotations

from modelchip.calibrate.harness import DecodeHarness, steps_needed
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


def measure(model: str, batch: int, context: int, steps: int, backend: str = "reference", device: str = "cpu",
            dtype: str = "float32", quantization: str | None = None) -> float:
    """Decode tokens/s at `batch` sequences of `context` tokens: over the median of `steps` timed decode steps
    (retimed when they spread; see DecodeHarness.time_decode)."""
    llm = _llm(model, backend, device, dtype, quantization)
    h = DecodeHarness(llm.model, batch, context, steps_needed(steps))
    h.prefill()
    return batch / h.time_decode(steps, name=f"bench batch {batch}")


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


def measure_parallel(model: str, tensor_parallel_size: int, batches: list[int], context: int, steps: int,
                     backend: str = "reference", device: str = "cpu", dtype: str = "float32",
                     quantization: str | None = None, progress=lambda m: None) -> list[dict]:
    """Median decode step seconds, and rank 0's median seconds per step inside collectives (the model's and the
    step broadcast), at each batch, for the model split over `tensor_parallel_size` processes (1: one process,
    through the same engine path). The run is closed before returning."""
    from modelchip.calibrate import microbench
    from modelchip.calibrate.harness import EngineHarness

    llm = LLM(model, backend=backend, device=device, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
              quantization=quantization)
    rows = []
    try:
        for batch in batches:
            progress(f"tensor parallel {tensor_parallel_size}, batch {batch}")
            h = EngineHarness(llm, batch, context, steps_needed(steps))
            h.prefill()
            name = f"bench tp {tensor_parallel_size} batch {batch}"
            seconds = h.time_decode(steps, name=name)
            timing = microbench.take_log()[name]
            rows.append({"batch": batch, "step_s": seconds, "comm_s": h.comm_per_step, "spread": timing.spread,
                         "attempts": timing.attempts})
            progress(f"tensor parallel {tensor_parallel_size}, batch {batch}: {seconds * 1e3:.1f} ms a step, "
                     f"{h.comm_per_step * 1e3:.1f} ms in collectives")
    finally:
        llm.close()
    return rows


def predict_parallel(model: str, profile: str, tensor_parallel_size: int, batch: int, context: int,
                     dtype: str = "float32"):
    """The planner's Prediction of one decode step of `batch` sequences over `tensor_parallel_size` ranks of
    this machine, from the profile (its measured collectives when the size is above 1)."""
    spec = families.read(_config(model), model)
    name = DTYPE_NAMES.get(dtype, dtype)
    precision = Precision(weight=name, kv=name, compute=name)
    from modelchip.spec.chips import get_chip

    d = Deployment(chip=get_chip("h100"), chips=tensor_parallel_size, strategy="tp",
                   batch=batch / tensor_parallel_size, context=context, precision=precision)
    return evaluate(model_cost(spec, precision), apply_profile(d, profile))
