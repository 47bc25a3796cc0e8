"""What every runtime layer shares: the ops it calls, and how checkpoint tensors land in its parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Slot:
    """Where one checkpoint tensor goes: a parameter, optionally a slice of it along dim 0 (or dims 0-1)."""

    param: nn.Parameter
    index: tuple = ()

    def target(self) -> torch.Tensor:
        return self.param.data[self.index] if self.index else self.param.data


def param(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class Layer(nn.Module):
    """A module whose forward calls only backend ops (`self.ops`), never a device or vendor API."""

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
