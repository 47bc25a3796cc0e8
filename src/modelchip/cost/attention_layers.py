"""Attention-core efficiency per chip from measured attention layers (kernels.toml [[attention_layer]], the
Step-3 paper's Table 9): the core's roofline time over what the measured layer leaves once the model's own
projection time and kernel floor are taken out. Kept per chip, attention kind and context, because the same
kernel family lands very differently on chips of one architecture (FlashMLA reaches a third of the H800's
efficiency on an H20 at 128 heads)."""

from __future__ import annotations

from functools import cache

from modelchip.cost import kernel_model as km
from modelchip.cost.conventions import Precision
from modelchip.cost.efficiency import defaults
from modelchip.cost.model_cost import OPS_PER_ATTENTION, model_cost
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip
from modelchip.spec.kernels import kernel_catalog


def layer_efficiency(chip_id: str, kind: str, context: int, exclude: frozenset[str] = frozenset()) -> float | None:
    """Roofline efficiency of the decode attention core of `kind` on this chip at `context` tokens, from the
    measured layers (log-interpolated in context, flat beyond the measured ones); None where none is measured."""
    points = _curves(exclude).get((chip_id, kind))
    return km.log_interp(points, context) if points else None


@cache
def _curves(exclude: frozenset[str]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    from modelchip.cost.deploy import Deployment, evaluate  # deploy looks efficiencies up here

    curves: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for table in kernel_catalog().attention_layer:
        if table.source_id in exclude:
            continue
        dtypes = dict(table.weight_dtype)
        for model, chip_id, context, us in table.rows:
            spec = load_model(model)
            precision = Precision(weight=dtypes.get(chip_id, "fp8"), kv="bf16")
            cost = model_cost(spec, precision)
            kind = cost.attention_kind
            chip = get_chip(chip_id)
            # the core at its roofline: attention efficiencies set to 1 (the GEMM tables still apply)
            eff = defaults(exclude).override({"attention_compute": 1.0, "attention_memory": 1.0})
            d = Deployment(chip=chip, chips=table.gpus, strategy=table.strategy, batch=table.batch / table.gpus,
                           context=context, precision=precision, efficiency=eff, exclude=exclude,
                           moe_balance="ideal")
            p = evaluate(cost, d)
            layers = spec.num_layers
            proj = p.breakdown_ms["attention_proj"] / layers
            core = p.breakdown_ms["attention_core"] / layers
            floor = (km.fixed("graph_kernel", (chip.arch,), exclude) or 0.0) * OPS_PER_ATTENTION[kind] * 1e3
            left = us / 1e3 - proj - floor
            curves.setdefault((chip_id, kind), []).append((context, min(1.0, core / left) if left > 0 else 1.0))
    return {k: sorted(v) for k, v in curves.items()}
