"""Efficiencies: what fraction of a spec peak real kernels and links reach (defaults in
spec/catalog/efficiency.toml, each with its source; overridable, and replaced by calibration)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields, replace
from functools import cache
from importlib import resources

from modelchip.errors import ModelchipError


@dataclass(frozen=True)
class Efficiency:
    gemm: float
    attention_compute: float
    memory: float
    scale_up: float
    scale_out: float
    memory_reserved: float
    attention_memory: float
    # measured weight-streaming efficiency by rows per matmul ((rows, fraction), ...), from calibration;
    # empty: `memory` at every batch
    memory_by_tokens: tuple = ()
    # names set by the user or a calibration profile: these win over the measured kernel tables
    explicit: frozenset = frozenset()

    def weight_memory(self, tokens: float) -> float:
        """Efficiency of streaming weights through a matmul of `tokens` rows (log-interpolated table)."""
        table = self.memory_by_tokens
        if not table:
            return self.memory
        if tokens <= table[0][0]:
            return table[0][1]
        for (m0, e0), (m1, e1) in zip(table, table[1:], strict=False):
            if tokens <= m1:
                f = math.log(tokens / m0) / math.log(m1 / m0)
                return e0 + f * (e1 - e0)
        return table[-1][1]

    def override(self, items: dict[str, float]) -> Efficiency:
        names = {f.name for f in fields(self)}
        items = dict(items)
        if "memory_by_tokens" in items:
            items["memory_by_tokens"] = tuple(sorted((float(m), float(e)) for m, e in items["memory_by_tokens"]))
        for key, value in items.items():
            if key not in names:
                raise ModelchipError(f"unknown efficiency {key!r}; known: {', '.join(sorted(names))}")
            if key == "memory_by_tokens":
                continue
            if not 0 < value <= 1:
                raise ModelchipError(f"efficiency {key} must be in (0, 1], got {value}")
        return replace(self, **items, explicit=self.explicit | frozenset(items))


@cache
def sources() -> dict[str, list[dict]]:
    """Each efficiency's measurements, preferred first (a name may list several, from different sources)."""
    data = tomllib.loads(resources.files("modelchip.spec").joinpath("catalog", "efficiency.toml").read_text())
    return {k: v if isinstance(v, list) else [v] for k, v in data.items()}


def chosen(name: str, exclude: frozenset[str] = frozenset()) -> dict | None:
    """The measurement an efficiency takes: the first not from an excluded source (None: all excluded)."""
    return next((m for m in sources()[name] if m.get("source_id") not in exclude), None)


@cache
def defaults(exclude: frozenset[str] = frozenset()) -> Efficiency:
    """The catalog's efficiencies; with `exclude`, each from its first measurement outside those sources,
    or 1.0 (the spec-sheet figure itself) where every measurement of it is excluded."""
    values = {}
    for name in sources():
        m = chosen(name, exclude)
        values[name] = float(m["value"]) if m else (0.0 if name == "memory_reserved" else 1.0)
    return Efficiency(**values)


def parse_overrides(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ModelchipError(f"efficiency override {item!r} is not of the form NAME=FRACTION")
        try:
            out[key.strip()] = float(value)
        except ValueError as exc:
            raise ModelchipError(f"efficiency override {item!r}: {value!r} is not a number") from exc
    return out
