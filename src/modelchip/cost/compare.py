"""`compare`: per-token accounting and the paper's decode cost for models x chips x contexts.

The defaults are the Step-3 paper's setting (its Tables 2, 3 and 6): nine models, H800/H20/A800/910B,
8K and 32K context, everything 8-bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from modelchip.cost import accounting, ffn, pricing
from modelchip.cost.conventions import PAPER, Convention, Precision
from modelchip.errors import ModelchipError
from modelchip.spec import load_model
from modelchip.spec.chips import Chip, get_chip

PAPER_MODELS = (
    "deepseek-v3", "kimi-k2", "qwen3-235b-a22b", "qwen3-32b", "llama4-maverick",
    "minimax-m1", "ernie-4.5-300b-a47b", "pangu-pro-moe", "step3",
)
PAPER_CHIPS = ("h800", "h20", "a800", "ascend-910b")
PAPER_CONTEXTS = (8192, 32768)


def parse_context(text: str | int) -> int:
    """'8K' -> 8192, '32k' -> 32768, '1M' -> 1048576, '4000' -> 4000."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(text))
        if not m:
            raise ModelchipError(f"context {text!r} is not a token count (e.g. 8192, 8K, 1M)")
        scale = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
        value = float(m.group(1)) * scale
        if value != int(value):
            raise ModelchipError(f"context {text!r} is not a whole number of tokens")
        value = int(value)
    if value <= 0:
        raise ModelchipError(f"context must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class Setting:
    models: tuple[str, ...] = PAPER_MODELS
    chips: tuple[str, ...] = PAPER_CHIPS
    contexts: tuple[int, ...] = PAPER_CONTEXTS
    precision: Precision = Precision()
    convention: Convention = PAPER
    sets: tuple[str, ...] = ()
    prices: dict[str, float] = field(default_factory=dict)
    phase: str = "decode"
    profiles: tuple[str, ...] = ()  # chip profiles from `modelchip calibrate`, compared beside the catalog's


def _chips(setting: Setting) -> list[Chip]:
    out = []
    for cid in setting.chips:
        chip = get_chip(cid)
        if chip.id in setting.prices:
            chip = chip.with_price(setting.prices[chip.id])
        out.append(chip)
    from modelchip.cost.profile import load_profile

    for path in setting.profiles:
        chip = load_profile(path)[0]
        out.append(chip.with_price(setting.prices[chip.id]) if chip.id in setting.prices else chip)
    if not out:
        raise ModelchipError("no chips to compare")
    return out


def run(setting: Setting) -> dict:
    """The comparison as one JSON-able dict: `rows` (one per model x context), `chips`, `models`."""
    if not setting.models:
        raise ModelchipError("no models to compare")
    contexts = [parse_context(c) for c in setting.contexts]
    chips = _chips(setting)
    units, unpriced = {}, {}
    for chip in chips:
        try:
            units[chip.id] = pricing.unit_cost(chip, setting.precision)
        except pricing.Unpriceable as exc:
            unpriced[chip.id] = str(exc)
    models, rows = {}, []
    for ref in setting.models:
        spec = load_model(ref, setting.sets)
        p = accounting.params(spec)
        moe = [layer.ffn for layer in spec.layers if layer.ffn.kind == "moe"]
        models[ref] = {
            "name": spec.name,
            "family": spec.family,
            "layers": spec.num_layers,
            "attention": spec.attention_kinds(),
            "ffn": spec.ffn_kinds(),
            "params_total": p.total,
            "params_active": p.active,
            "moe_sparsity": ffn.sparsity(moe[0]) if moe else None,
            "kv_cache_bytes_per_token": accounting.account(spec, 1, precision=setting.precision,
                                                          convention=setting.convention).kv_cache_bytes_per_token,
            "source": spec.source,
        }
        for context in contexts:
            acc = accounting.account(spec, context, setting.phase, setting.precision, setting.convention)
            costs = {cid: pricing.decode_cost(acc, unit) for cid, unit in units.items()}
            best = pricing.best_split(costs)
            rows.append({
                "model": ref,
                "context": context,
                "kv_bytes": acc.kv_bytes,
                "attention_flops": acc.attention_flops,
                "linear_flops": acc.linear_flops,
                "ffn_flops": acc.ffn_flops,
                "router_flops": acc.router_flops,
                "lm_head_flops": acc.lm_head_flops,
                "weight_bytes": acc.weight_bytes,
                "arithmetic_intensity": acc.arithmetic_intensity,
                "cost": {cid: {"attention": c.attention, "ffn": c.ffn, "attention_bound": c.attention_bound}
                         for cid, c in costs.items()},
                "best": None if best is None else {
                    "attention_chip": best.attention_chip,
                    "ffn_chip": best.ffn_chip,
                    "total": best.total,
                    "same_chip": best.same_chip,
                    "same_chip_total": best.same_chip_total,
                },
            })
    return {
        "settings": {
            "phase": setting.phase,
            "contexts": contexts,
            "weight_dtype": setting.precision.weight,
            "kv_dtype": setting.precision.kv,
            "compute_dtype": setting.precision.compute,
            "convention": setting.convention.name,
            "sets": list(setting.sets),
            "units": "bytes and FLOPs per token; cost in USD per 1M decoded tokens",
        },
        "chips": {
            chip.id: {
                "name": chip.name,
                "usd_per_hour": chip.usd_per_hour,
                "bandwidth": chip.bandwidth,
                **({
                    "compute_dtype": units[chip.id].compute_dtype,
                    "peak_flops": chip.peak(units[chip.id].compute_dtype),
                    "usd_per_flop": units[chip.id].usd_per_flop,
                    "usd_per_byte": units[chip.id].usd_per_byte,
                    "ridge": units[chip.id].ridge,
                } if chip.id in units else {"unpriced": unpriced[chip.id]}),
            }
            for chip in chips
        },
        "models": models,
        "rows": rows,
    }


def with_prices(setting: Setting, prices: dict[str, float]) -> Setting:
    return replace(setting, prices={**setting.prices, **prices})
