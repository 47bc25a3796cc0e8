"""Put checkpoint tensors into a model's parameters, checking every name and shape before anything is kept.

Loading is strict both ways: every parameter must come from the checkpoint, and every checkpoint tensor must
land in a parameter, except the ones `ignorable` lists. A tensor with no place means the checkpoint computes
something the model as configured does not (a bias, a norm, a quantization scale); loading it anyway would
give wrong output without a word.

Quantized matrices (`QuantizedWeight`) stay packed where the model reads them only through `linear`: the
parameter is replaced by one QuantizedWeight (q/k/v or gate/up parts stacked by rows, as the float
parameter stacks them). Everywhere else they are dequantized into the parameter, and `dequantized` counts
why: the embedding table (read one row at a time, not streamed through a matmul; a tied LM head keeps the
packed copy), MoE expert stacks and routers (moe_experts takes float stacks), and a stacked parameter whose
parts differ in format (Q4_K beside Q6_K, as llama.cpp's *_M mixes write) or are partly unquantized.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.dequant import dequantize
from modelchip.runtime.quant import QuantizedWeight, stack_rows

# Tensors a checkpoint may hold that the runtime leaves unused, and why (docs/runtime.md lists them too):
# RoPE frequency caches some exporters saved (the runtime computes its own tables from the config).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def ignorable(name: str, spec) -> bool:
    """True for the checkpoint tensors the runtime may leave unused (see IGNORED_SUFFIXES and below)."""
    if name.endswith(IGNORED_SUFFIXES):
        return True
    # a tied head is the embedding: transformers ignores a saved copy too
    if name == "lm_head.weight" and spec.tie_word_embeddings:
        return True
    # DeepSeek-V3 / Kimi-K2 ship their multi-token-prediction modules as layers num_hidden_layers onwards;
    # they serve speculative decoding and are not part of the model's forward pass (vLLM skips them too)
    m = _LAYER.match(name)
    if not m or spec.family not in ("deepseek_v3", "kimi_k2"):
        return False
    mtp = int(spec.config.get("num_nextn_predict_layers", spec.config.get("num_mtp_layers", 0)) or 0)
    return spec.num_layers <= int(m.group(1)) < spec.num_layers + mtp


def _linear_holders(model) -> dict[int, list[tuple[object, str]]]:
    """id(parameter) -> the (module, attribute) pairs that read it only through `linear`."""
    holders: dict[int, list[tuple[object, str]]] = {}
    for module in model.modules():
        for attr in getattr(module, "LINEAR_WEIGHTS", ()):
            p = module._parameters.get(attr)
            if p is not None:
                holders.setdefault(id(p), []).append((module, attr))
    return holders


def _registrations(model) -> tuple[Counter[int], dict[int, str]]:
    """(id(parameter) -> how many module attributes hold it, id(parameter) -> the first such attribute)."""
    count, attr = Counter(), {}
    for m in model.modules():
        for name, p in m._parameters.items():
            if p is not None:
                count[id(p)] += 1
                attr.setdefault(id(p), name)
    return count, attr


def load_weights(model, tensors: Iterable[tuple[str, torch.Tensor | QuantizedWeight]],
                 dequantized: Counter[str] | None = None) -> list[str]:
    """Copy every expected tensor into `model` (cast to its dtype), keeping quantized linear weights packed
    (see the module docstring); returns the ignorable names it skipped. `dequantized` counts the quantized
    tensors unpacked at load, by reason.

    Tensors may be lazy (`.shape` and `.read(index)`), so a tensor-parallel rank reads only its shards; a
    quantized weight split over ranks is dequantized whole, then sliced (counted). A name whose slot is None
    belongs to another rank (an expert-parallel rank's experts): it must be in the checkpoint but is not read.

    Raises ModelchipError naming a missing tensor, a tensor with no place in the model, or a shape mismatch
    (expected vs actual).
    """
    slots = model.slots()
    seen, ignored = set(), []
    dequantized = Counter() if dequantized is None else dequantized
    holders, (registered, attr_of) = _linear_holders(model), _registrations(model)
    packed: dict[int, list[tuple[int, str, QuantizedWeight]]] = {}  # id(param) -> (first row, name, part)
    for name, tensor in tensors:
        slot = slots.get(name)
        if slot is None and name in slots:  # another rank's expert (expert parallel): this rank never reads it
            seen.add(name)
            continue
        if slot is None:
            if ignorable(name, model.spec):
                ignored.append(name)
                continue
            raise ModelchipError(
                f"checkpoint tensor {name!r} has no place in this {model.spec.family!r} model as its config.json "
                "describes it (a bias, norm or scale the config does not switch on?); refusing to drop it")
        target = slot.target()
        expected = list(target.shape)
        if slot.source is not None:  # tensor parallel: the whole tensor is checked, only this rank's part read
            expected[slot.source.dim] = slot.source.full
        if tuple(tensor.shape) != tuple(expected):
            raise ModelchipError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(expected)}")
        seen.add(name)
        if isinstance(tensor, QuantizedWeight):
            key = id(slot.param)
            row_slice = not slot.index or (len(slot.index) == 1 and isinstance(slot.index[0], slice))
            if slot.source is not None:
                dequantized[f"{tensor.format} weight split over tensor-parallel ranks"] += 1
            elif key in holders and row_slice:
                start = (slot.index[0].start or 0) if slot.index else 0
                packed.setdefault(key, []).append((start, name, tensor))
                if registered[key] == len(holders[key]):
                    continue  # read by linear alone: the float parameter is never filled
                # also read otherwise (a tied embedding table): keep a float copy for that use too
                dequantized[f"{tensor.format} embedding table (read by row; its tied LM head stays packed)"] += 1
            else:
                dequantized[f"{tensor.format} weight not read by linear ({attr_of[key]})"] += 1
            tensor = dequantize(tensor)
        target.copy_(_read(tensor, slot.source).to(target.dtype))
    missing = [n for n in slots if n not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelchipError(f"checkpoint is missing tensor {missing[0]!r}{more}")
    params = {id(s.param): s.param for s in slots.values() if s is not None}
    for key, parts in packed.items():
        _keep_packed(params[key], sorted(parts, key=lambda p: p[0]), holders[key], registered[key], dequantized)
    return ignored


def _read(tensor, shard) -> torch.Tensor:
    """The tensor, or its shard. A lazy checkpoint tensor (safetensors_dir.LazyTensor) reads only those bytes."""
    if isinstance(tensor, torch.Tensor):
        return tensor if shard is None else tensor[shard.index()]
    return tensor.read(None if shard is None else shard.index())


def _keep_packed(param: torch.nn.Parameter, parts: list[tuple[int, str, QuantizedWeight]],
                 holders: list[tuple[object, str]], registrations: int, dequantized: Counter[str]) -> None:
    """Replace `param` in its linear holders by the stacked parts, or dequantize the parts into it when they
    do not make one weight (formats differ, or some rows came from unquantized tensors)."""
    rows = sum(p.out_features for _, _, p in parts)
    formats = {p.format for _, _, p in parts}
    schemes = {(p.in_features, p.activation) for _, _, p in parts}
    if rows == param.shape[0] and len(formats) == 1 and len(schemes) == 1:
        weight = stack_rows([p for _, _, p in parts]).with_compute_dtype(param.dtype)
        for module, attr in holders:
            del module._parameters[attr]
            setattr(module, attr, weight)
        return
    why = "formats differ" if len(formats) > 1 else "some rows are unquantized"
    for start, _, part in parts:
        if registrations == len(holders):  # not yet written (see load_weights)
            param.data[start:start + part.out_features].copy_(dequantize(part).to(param.dtype))
        dequantized[f"{part.format} part of a stacked weight whose {why} ({'/'.join(sorted(formats))})"] += 1
