"""The predict-measure loop: time the runtime's decode, and predict the same run from a calibrated profile."""

from __future__ import annotations

from collections import Counter

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


def run_precision(model: str, backend: str = "reference", device: str = "cpu",
                  dtype: str = "float32") -> tuple[Precision, list[str]]:
    """The number formats of the run `measure` times, as the planner names them: the activations' and KV
    cache's dtype, and the formats its linear weights were kept in (a GGUF file's packed blocks, or the float
    dtype of those loaded unpacked: the FFN's format by weight count, the attention projections' and the LM
    head's where they differ), with a note where a part mixes formats the planner prices as one."""
    name = DTYPE_NAMES.get(dtype, dtype)
    attn, ffn, head = Counter(), Counter(), ""
    for weight, (fmt, count) in _llm(model, backend, device, dtype).weight_formats.items():
        fmt = DTYPE_NAMES.get(fmt, fmt)
        if weight == "lm_head":
            head = fmt
        else:
            (attn if ".self_attn." in weight else ffn)[fmt] += count
    weight = (ffn or attn or Counter([name])).most_common(1)[0][0]
    attention = attn.most_common(1)[0][0] if attn else weight
    said = [f"{part} weights mix {', '.join(f'{n:,} {f}' for f, n in c.items())}: priced as {c.most_common(1)[0][0]}"
            for part, c in (("attention", attn), ("FFN", ffn)) if len(c) > 1]
    return Precision(weight=weight, kv=name, compute=name, attention_weight="" if attention == weight else attention,
                     lm_head_weight="" if head in ("", attention) else head), said


def predict(model: str, profile: str, batch: int, context: int, dtype: str = "float32",
            precision: Precision | None = None) -> float:
    """Decode tokens/s the planner predicts for the same run on the calibrated profile (`precision`: the run's
    formats, from `run_precision`; default all weights in `dtype`)."""
    spec = families.read(_config(model), model)
    name = DTYPE_NAMES.get(dtype, dtype)
    precision = precision or Precision(weight=name, kv=name, compute=name)
    from modelchip.spec.chips import get_chip

    d = Deployment(chip=get_chip("h100"), chips=1, strategy="tp", batch=batch, context=context, precision=precision)
    return evaluate(model_cost(spec, precision), apply_profile(d, profile)).tokens_per_s_per_chip


def profile_notes(profile: str, precision: Precision) -> list[str]:
    """What the profile says about pricing these formats (a packed format it did not measure, ...)."""
    from modelchip.cost import streaming

    return streaming.from_profile(profile, precision)[1]


def _config(model: str) -> dict:
    from modelchip.runtime.loaders.resolve import resolve

    return resolve(model).config
