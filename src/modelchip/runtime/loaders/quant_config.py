"""What an HF checkpoint's `quantization_config` says, and its quantized tensors paired into `QuantizedWeight`s.

Two methods are read, both as their writers lay them out:
  fp8                 block-scaled FP8 (DeepSeek-V3, Qwen3-FP8): `X.weight` float8_e4m3fn [out, in] and
                      `X.weight_scale_inv` float32 [ceil(out/bo), ceil(in/bi)], `weight_block_size` [bo, bi]; the
                      weight is scale * fp8 over each block. Activations stay in the model's dtype (weight-only,
                      as engines run it on chips without FP8 matmuls), where DeepSeek's own kernels quantize
                      them to FP8 per 128 channels.
  compressed-tensors  INT8 as llm-compressor writes it (format int-quantized): `X.weight` int8 [out, in],
                      `X.weight_scale` [out, 1] (per output channel, symmetric), and for W8A8 activations
                      quantized per token at run time (dynamic, symmetric; no stored input scale).
Anything else that says it is quantized (GPTQ, AWQ, bitsandbytes, per-tensor FP8, static activation scales,
packed int4) is refused by name: loading its packed tensors as plain weights would compute garbage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.quant import QuantizedWeight

METHODS = ("fp8", "compressed-tensors")


def method(config: dict) -> str | None:
    """The checkpoint's quantization method (None when it is not quantized), checked to be one modelchip reads."""
    q = config.get("quantization_config")
    if not q:
        return None
    name = q.get("quant_method")
    if name == "fp8":
        _fp8_block(q)
    elif name == "compressed-tensors":
        _int8_scheme(q)
    else:
        raise ModelchipError(f"quantization_config.quant_method {name!r} is not supported (modelchip reads "
                             f"{', '.join(METHODS)} checkpoints and GGUF files); pass a dequantized checkpoint")
    return name


def _fp8_block(q: dict) -> tuple[int, int]:
    block = q.get("weight_block_size")
    if not block:
        raise ModelchipError("quantization_config: fp8 without weight_block_size (per-tensor FP8) is not "
                             "supported; modelchip reads block-scaled FP8 (DeepSeek-V3/Qwen3-FP8 layout)")
    if len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block):
        raise ModelchipError(f"quantization_config.weight_block_size {block!r} must be two positive integers")
    if q.get("activation_scheme", "dynamic") != "dynamic":
        raise ModelchipError(f"quantization_config: fp8 activation_scheme {q['activation_scheme']!r} is not "
                             "supported (static input scales); only 'dynamic'")
    if q.get("fmt", "e4m3") != "e4m3":
        raise ModelchipError(f"quantization_config: fp8 fmt {q['fmt']!r} is not supported; only e4m3")
    return block[0], block[1]


def _int8_scheme(q: dict) -> str | None:
    """The activation scheme (None or "int8_dynamic_token") every config group shares."""
    fmt = q.get("format")
    groups = q.get("config_groups") or {}
    if not groups:
        raise ModelchipError("quantization_config: compressed-tensors without config_groups")
    schemes = set()
    for name, g in groups.items():
        gfmt = g.get("format") or fmt
        if gfmt not in ("int-quantized", "naive-quantized"):
            raise ModelchipError(f"compressed-tensors format {gfmt!r} (group {name}) is not supported; modelchip "
                                 "reads int-quantized INT8 (weight-only or W8A8)")
        w = g.get("weights") or {}
        if (w.get("num_bits"), w.get("type"), w.get("strategy"), w.get("symmetric", True)) != \
                (8, "int", "channel", True):
            raise ModelchipError(f"compressed-tensors weights {w!r} (group {name}) are not supported; modelchip "
                                 "reads 8-bit symmetric int weights with one scale per output channel")
        a = g.get("input_activations")
        if a is None:
            schemes.add(None)
        elif (a.get("num_bits"), a.get("type"), a.get("strategy"), a.get("dynamic"), a.get("symmetric", True)) \
                == (8, "int", "token", True, True):
            schemes.add("int8_dynamic_token")
        else:
            raise ModelchipError(f"compressed-tensors input_activations {a!r} (group {name}) are not supported; "
                                 "modelchip reads none (weight-only) or dynamic symmetric int8 per token")
    if len(schemes) > 1:
        raise ModelchipError("compressed-tensors config groups mix weight-only and W8A8; not supported")
    return schemes.pop()


def pair_tensors(config: dict, tensors: Iterable[tuple[str, torch.Tensor]]
                 ) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """The checkpoint's tensors with each quantized weight and its scales joined into one `QuantizedWeight`
    under the weight's name; plain tensors pass through. A weight without its scale (or the reverse) is an
    error naming it."""
    name = method(config)
    if name is None:
        yield from tensors
        return
    q = config["quantization_config"]
    if name == "fp8":
        block, scale_suffix, activation = _fp8_block(q), ".weight_scale_inv", None
    else:
        block, scale_suffix, activation = None, ".weight_scale", _int8_scheme(q)
    stored = torch.float8_e4m3fn if name == "fp8" else torch.int8
    weights: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for key, t in tensors:
        prefix = key.rsplit(".", 1)[0]
        if key.endswith(scale_suffix):
            scales[key[: -len(scale_suffix)]] = t
        elif key.endswith(".weight") and t.dtype == stored:
            weights[prefix] = t
        elif key.endswith((".weight_zero_point", ".input_zero_point")):
            if bool(t.ne(0).any()):
                raise ModelchipError(f"{key}: asymmetric quantization (non-zero zero point) is not supported")
        elif key.endswith(".input_scale"):
            raise ModelchipError(f"{key}: static activation scales are not supported (only dynamic)")
        else:
            yield key, t
            continue
        if prefix in weights and prefix in scales:
            yield f"{prefix}.weight", _joined(name, prefix, weights.pop(prefix), scales.pop(prefix), block,
                                              activation)
    for prefix in weights:
        raise ModelchipError(f"{prefix}.weight is {stored} but the checkpoint has no {prefix}{scale_suffix}")
    for prefix in scales:
        raise ModelchipError(f"{prefix}{scale_suffix} has no quantized {prefix}.weight to scale")


def _joined(name: str, prefix: str, weight: torch.Tensor, scale: torch.Tensor, block, activation
            ) -> QuantizedWeight:
    if weight.dim() != 2:
        raise ModelchipError(f"{prefix}.weight: a quantized weight must be 2-D, got {list(weight.shape)}")
    out, inp = weight.shape
    try:
        if name == "fp8":
            return QuantizedWeight("fp8_block", weight, out, inp, scale.float(), tuple(block))
        return QuantizedWeight("int8_channel", weight, out, inp, scale.float().reshape(-1), activation=activation)
    except ModelchipError as exc:
        raise ModelchipError(f"{prefix}: {exc}") from exc
