"""Chip profiles written by `modelchip calibrate`: the catalog's chip format plus measured efficiencies and
fixed host overheads. Reading one needs no torch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from modelchip.cost import collectives, streaming
from modelchip.cost.deploy import Deployment
from modelchip.cost.efficiency import defaults
from modelchip.errors import ModelchipError
from modelchip.spec.chips import Chip, chip_from_toml


def load_profile(path: str | Path, weight_dtype: str | None = None) -> tuple[Chip, dict, dict]:
    """(chip, efficiency overrides, overheads) from a profile written by `calibrate`; with `weight_dtype`
    ('fp32', 'bf16'), the weight-streaming efficiencies measured for that dtype replace the float32 ones."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelchipError(f"cannot read profile {path}: {exc}") from exc
    if not isinstance(data, dict) or "flops" not in data or "memory" not in data:
        raise ModelchipError(f"{path} is not a modelchip chip profile (no flops/memory tables)")
    eff = dict(data.get("efficiency", {}))
    per_dtype = eff.pop("by_weight_dtype", {})
    eff.update(per_dtype.get(weight_dtype, {}))
    return chip_from_toml(data, str(path)), eff, data.get("overhead", {})


def apply_profile(d: Deployment, path: str | Path) -> Deployment:
    """The deployment on the profiled chip, with its measured efficiencies and overheads (and, for tensor
    parallelism or a runtime parallel layout over several ranks, its measured collectives)."""
    chip, eff, overhead = load_profile(path, d.precision.weight)
    tables, said = streaming.from_profile(path, d.precision)  # packed formats' measured rates (cost/streaming.py)
    return replace(d, chip=chip, system=None, efficiency=defaults().override(eff),
                   overhead_per_op_s=overhead.get("per_op_s", 0.0), overhead_per_seq_s=overhead.get("per_seq_s", 0.0),
                   overhead_per_step_s=overhead.get("per_step_s", 0.0),
                   overhead_per_seq_step_s=overhead.get("per_seq_step_s", 0.0),
                   overhead_per_expert_s=overhead.get("per_expert_s", 0.0),
                   overhead_cold_op=tuple((float(n), float(t)) for n, t in overhead.get("cold_op_s", ())),
                   collectives=collectives.for_deployment(d.strategy, d.chips, path, bool(d.attention)),
                   weight_streaming=tables, notes=(*d.notes, *said))
