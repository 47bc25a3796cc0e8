"""Put checkpoint tensors into a model's parameters, checking every name and shape before anything is kept."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from modelchip.errors import ModelchipError

# Checkpoint entries the runtime does not use: rotary caches, DeepSeek's multi-token-prediction layers.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def load_weights(model, tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Copy every expected tensor into `model` (cast to its dtype); returns the names it ignored.

    Raises ModelchipError naming a missing tensor or a shape mismatch (expected vs actual).
    """
    slots = model.slots()
    seen, ignored = set(), []
    for name, tensor in tensors:
        slot = slots.get(name)
        if slot is None:
            ignored.append(name)
            continue
        target = slot.target()
        if tuple(target.shape) != tuple(tensor.shape):
            raise ModelchipError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
        target.copy_(tensor.to(target.dtype))
        seen.add(name)
    missing = [n for n in slots if n not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelchipError(f"checkpoint is missing tensor {missing[0]!r}{more}")
    return [n for n in ignored if not n.endswith(IGNORED_SUFFIXES)]
