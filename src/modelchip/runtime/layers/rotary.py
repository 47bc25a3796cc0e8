"""Rotary position embedding tables: plain RoPE, Llama 3 frequency scaling and YaRN.

Follows the published definitions (and transformers' rope utilities, which checkpoints were trained with):
inv_freq_i = theta^(-2i/d); YaRN blends interpolated and extrapolated frequencies over a ramp between the
correction dims of beta_fast and beta_slow, and scales cos/sin by an attention factor.
"""

from __future__ import annotations

import math

import torch

from modelchip.errors import ModelchipError


def _yarn(inv_freq: torch.Tensor, dim: int, theta: float, s: dict) -> tuple[torch.Tensor, float]:
    factor = float(s["factor"])
    original = float(s["original_max_position_embeddings"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if (m and m_all) else mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.get("beta_fast") or 32), correction_dim(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp
    return inv_freq / factor * (1 - extrapolate) + inv_freq * extrapolate, float(attention_factor)


def _llama3(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    original = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(is_mid, mid, scaled)


class RotaryEmbedding:
    """cos/sin tables [positions, dim/2] for a rotary dim, grown on demand."""

    def __init__(self, dim: int, theta: float, scaling: dict | None = None):
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.attention_factor = 1.0
        kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
        if kind == "yarn":
            inv_freq, self.attention_factor = _yarn(inv_freq, dim, theta, scaling)
        elif kind == "llama3":
            inv_freq = _llama3(inv_freq, scaling)
        elif kind == "linear":
            inv_freq = inv_freq / float(scaling["factor"])
        elif kind != "default":
            raise ModelchipError(f"unsupported rope scaling {kind!r}; supported: default, linear, llama3, yarn")
        self.inv_freq = inv_freq
        self._cos = self._sin = torch.empty(0)
        self._last: tuple = (None, None)

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # every layer of a step asks for the same positions tensor: look its rows up once (held, so its
        # identity cannot be reused by a later step's tensor)
        if self._last[0] is positions:
            return self._last[1]
        self._last = (positions, self._lookup(positions))
        return self._last[1]

    def _lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        needed = int(positions.max()) + 1 if positions.numel() else 0
        if needed > self._cos.shape[0]:
            size = max(needed, 2 * self._cos.shape[0], 256)
            freqs = torch.outer(torch.arange(size, dtype=torch.float32), self.inv_freq)
            self._cos = (freqs.cos() * self.attention_factor).to(positions.device)
            self._sin = (freqs.sin() * self.attention_factor).to(positions.device)
        return self._cos[positions], self._sin[positions]
