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


def _llm(model: str, backend: str, device: str, dtype: str) -> LLM:
    key = (model, backend, device, dtype)
    if key not in _LOADED:
        _LOADED[key] = LLM(model, backend=backend, device=device, dtype=dtype)
    return _LOADED[key]


def measure(model: str, batch: int, context: int, steps: int, backend: str = "reference", device: str = "cpu",
            dtype: str = "float32") -> float:
    """Decode tokens/s at `batch` sequences of `context` tokens: over the median of `steps` timed decode steps
    (retimed when they spread; see DecodeHarness.time_decode)."""
    llm = _llm(model, backend, device, dtype)
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
