"""What every runtime layer shares: the ops it calls, and how checkpoint tensors land in its parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modelchip.runtime.dequant import dequantize
from modelchip.runtime.distributed.tensor_parallel import Shard
from modelchip.runtime.quant import QuantizedWeight


@dataclass(frozen=True)
class Slot:
    """Where one checkpoint tensor goes: a parameter, optionally a slice of it along dim 0 (or dims 0-1).
    Under tensor parallelism `source` names the part of the checkpoint tensor this rank reads (its shard)."""

    param: nn.Parameter
    index: tuple = ()
    source: Shard | None = None

    def target(self) -> torch.Tensor:
        return self.param.data[self.index] if self.index else self.param.data


def stacked_slots(prefix: str, names: tuple[str, ...], kind: str, stacked: nn.Parameter,
                  sizes: tuple[int, ...], sources: tuple[Shard | None, ...] | None = None) -> dict[str, Slot]:
    """Checkpoint tensors `prefix.name.kind` stored one after another along dim 0 of `stacked` (each read
    whole, or only its `sources` shard)."""
    out, start = {}, 0
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        source = sources[i] if sources else None
        out[f"{prefix}.{name}.{kind}"] = Slot(stacked, (slice(start, start + size),), source)
        start += size
    return out


def param(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class Layer(nn.Module):
    """A module whose forward calls only backend ops (`self.ops`), never a device or vendor API."""

    # parameters read only by `ops.linear`: handed to the backend's prepare_linear once after loading
    LINEAR_WEIGHTS: tuple[str, ...] = ()

    def __init__(self, ops, dtype: torch.dtype):
        super().__init__()
        self.ops = ops
        self.dtype = dtype
        self.device = ops.device

    def p(self, *shape: int) -> nn.Parameter:
        return param(*shape, dtype=self.dtype, device=self.device)

    def slots(self, prefix: str) -> dict[str, Slot]:
        """Checkpoint tensor name -> where it is stored, for this module's own parameters."""
        return {}


def prepare_linear_weights(model: nn.Module, ops) -> int:
    """Replace every module's linear-only weights by the backend's prepared handles. Returns how many weights
    were prepared. Run once, after loading.

    A quantized weight (the loader left a `QuantizedWeight` in place of the parameter) goes to the backend
    when it lists the format in `quantized_formats`; otherwise it is dequantized here to the model's dtype,
    once, and counted in `ops.fallbacks`, so a backend without quantized kernels still runs the model."""
    count = 0
    for module in model.modules():
        for name in getattr(module, "LINEAR_WEIGHTS", ()):
            weight = module._parameters.get(name)
            if weight is None:
                weight = getattr(module, name, None)
                if not isinstance(weight, QuantizedWeight):  # absent (MLA without q_lora), or already prepared
                    continue
                if weight.format not in ops.quantized_formats:
                    ops.fallbacks[f"linear: {weight.format} weights dequantized at load (backend "
                                  f"{ops.name!r} has no {weight.format} linear)"] += 1
                    weight = dequantize(weight, weight.compute_dtype)
                elif not ops.prepares_weights:
                    continue  # the backend's linear reads the QuantizedWeight as it is
            elif not ops.prepares_weights:
                continue
            else:
                del module._parameters[name]  # the handle replaces it; a tied tensor stays with its owner
                weight = weight.data
            setattr(module, name, ops.prepare_linear(weight) if ops.prepares_weights else weight)
            count += 1
    return count
