"""Put checkpoint tensors into a model's parameters, checking every name and shape before anything is kept.

Loading is strict both ways: every parameter must come from the checkpoint, and every checkpoint tensor must
land in a parameter, except the ones `ignorable` lists. A tensor with no place means the checkpoint computes
something the model as configured does not (a bias, a norm, a quantization scale); loading it anyway would
give wrong output without a word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from modelchip.errors import ModelchipError

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


def load_weights(model, tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Copy every expected tensor into `model` (cast to its dtype); returns the ignorable names it skipped.
    Tensors may be lazy (`.shape` and `.read(index)`), so a tensor-parallel rank reads only its shards.

    Raises ModelchipError naming a missing tensor, a tensor with no place in the model, or a shape mismatch
    (expected vs actual).
    """
    slots = model.slots()
    seen, ignored = set(), []
    for name, tensor in tensors:
        slot = slots.get(name)
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
        target.copy_(_read(tensor, slot.source).to(target.dtype))
        seen.add(name)
    missing = [n for n in slots if n not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelchipError(f"checkpoint is missing tensor {missing[0]!r}{more}")
    return ignored


def _read(tensor, shard) -> torch.Tensor:
    """The tensor, or its shard. A lazy checkpoint tensor (safetensors_dir.LazyTensor) reads only those bytes."""
    if isinstance(tensor, torch.Tensor):
        return tensor if shard is None else tensor[shard.index()]
    return tensor.read(None if shard is None else shard.index())
