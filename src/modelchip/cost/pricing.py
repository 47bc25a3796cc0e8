"""The Step-3 paper's decode cost model (section 4): USD per 1M decoded tokens for attention and FFN.

Unit costs come from a chip's hourly price and its peaks: $/FLOP = price / 3600 / peak FLOP/s (in the
deployment's compute format), $/byte = price / 3600 / memory bandwidth. Per decoded token:
  attention = max(B * $/FLOP, A * $/byte) + C * $/FLOP      (core bound by compute or memory, plus projections)
  FFN       = D * $/FLOP                                    (FFN batched to compute-bound)
With attention-FFN disaggregation each part runs on its cheapest chip.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelchip.cost.accounting import TokenAccount
from modelchip.cost.conventions import Precision
from modelchip.spec.chips import Chip

PER_MILLION = 1e6


@dataclass(frozen=True)
class UnitCost:
    chip: str
    compute_dtype: str
    usd_per_flop: float
    usd_per_byte: float

    @property
    def ridge(self) -> float:
        """FLOPs per byte where the chip turns from memory- to compute-bound (peak / bandwidth)."""
        return self.usd_per_byte / self.usd_per_flop


class Unpriceable(Exception):
    """A chip lacks a figure the cost model needs (price, peak for the compute format, or bandwidth)."""


def unit_cost(chip: Chip, precision: Precision) -> UnitCost:
    dtype = precision.compute_dtype(chip)
    peak = chip.peak(dtype)
    missing = [name for name, v in (("price", chip.usd_per_hour), (f"{dtype} peak", peak),
                                    ("memory bandwidth", chip.bandwidth)) if not v]
    if missing:
        raise Unpriceable(f"{chip.id} has no {' or '.join(missing)} in the catalog")
    per_second = chip.usd_per_hour / 3600.0
    return UnitCost(chip.id, dtype, per_second / peak, per_second / chip.bandwidth)


@dataclass(frozen=True)
class DecodeCost:
    """USD per 1M decoded tokens on one chip."""

    attention: float
    ffn: float
    attention_bound: str  # "memory" or "compute": which term of the max() won

    @property
    def total(self) -> float:
        return self.attention + self.ffn


def decode_cost(acc: TokenAccount, unit: UnitCost) -> DecodeCost:
    core_compute = acc.attention_flops * unit.usd_per_flop
    core_memory = acc.kv_bytes * unit.usd_per_byte
    attention = max(core_compute, core_memory) + acc.linear_flops * unit.usd_per_flop
    ffn = (acc.ffn_flops + acc.router_flops) * unit.usd_per_flop
    # the LM head runs where the attention instances live (AFD puts embedding and LM head there)
    attention += acc.lm_head_flops * unit.usd_per_flop
    return DecodeCost(
        attention=attention * PER_MILLION,
        ffn=ffn * PER_MILLION,
        attention_bound="memory" if core_memory >= core_compute else "compute",
    )


@dataclass(frozen=True)
class Best:
    attention_chip: str
    ffn_chip: str
    total: float
    same_chip: str  # the cheapest chip when attention and FFN must share it
    same_chip_total: float


def best_split(costs: dict[str, DecodeCost]) -> Best | None:
    """Cheapest chip for attention, cheapest for FFN (AFD), and the cheapest single chip for comparison."""
    if not costs:
        return None
    attn = min(costs, key=lambda c: costs[c].attention)
    ffn = min(costs, key=lambda c: costs[c].ffn)
    same = min(costs, key=lambda c: costs[c].total)
    return Best(attn, ffn, costs[attn].attention + costs[ffn].ffn, same, costs[same].total)
