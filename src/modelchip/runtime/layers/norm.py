from __future__ import annotations

import torch

from modelchip.runtime.layers.base import Layer, Slot


class RMSNorm(Layer):
    def __init__(self, ops, dim: int, eps: float, dtype: torch.dtype):
        super().__init__(ops, dtype)
        self.eps = eps
        self.weight = self.p(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)

    def slots(self, prefix: str) -> dict[str, Slot]:
        return {f"{prefix}.weight": Slot(self.weight)}
