"""Measured weight streaming per packed format: how fast a calibrated backend's `linear` reads a weight kept in
GGUF blocks or block-scaled FP8, as bytes per second of the packed bytes (scales included) at decode row
counts. `modelchip calibrate` writes the table under a profile's `weight_streaming`; the planner prices a
matmul's weight read in such a format as its packed bytes over the measured rate, not at the float
bandwidth efficiency, because a packed kernel's speed is set by its unpacking arithmetic as much as by the
bytes. Reading a table needs no torch."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from modelchip.errors import ModelchipError
from modelchip.spec import dtypes

# what a backend did with the packed weight it was handed (the measured rate is of what it kept)
KEPT = ("packed", "dequantized at prepare", "unpacked per call")
# formats whose bytes are not a plain float's: a profile measures each its backend takes
PACKED = ("q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "fp8_block")


@dataclass(frozen=True)
class FormatStreaming:
    """One format's measured table. `rates`: (rows per matmul, packed bytes/s), ascending rows;
    `per_call_s`: (rows, seconds of one linear over the calibration's matrix)."""

    format: str
    kept: str
    note: str
    rates: tuple[tuple[float, float], ...]
    per_call_s: tuple[tuple[float, float], ...] = ()

    def rate(self, rows: float) -> float:
        """Packed bytes/s at `rows` rows per matmul: linear in log(rows) between measured row counts (as
        `Efficiency.weight_memory` interpolates), the nearest measured one outside them."""
        table = self.rates
        if rows <= table[0][0]:
            return table[0][1]
        for (m0, r0), (m1, r1) in zip(table, table[1:], strict=False):
            if rows <= m1:
                f = math.log(rows / m0) / math.log(m1 / m0)
                return r0 + f * (r1 - r0)
        return table[-1][1]


def parse(section: object, source: str = "profile") -> tuple[FormatStreaming, ...]:
    """The tables of a profile's `weight_streaming` section, checked (a missing section is no tables)."""
    if section is None:
        return ()
    formats = section.get("formats") if isinstance(section, dict) else None
    if not isinstance(formats, dict):
        raise ModelchipError(f"{source}: weight_streaming must be an object with a 'formats' table")
    out = []
    for fmt, entry in formats.items():
        where = f"{source}: weight_streaming format {fmt!r}"
        if fmt not in dtypes.BYTES:
            raise ModelchipError(f"{where} is not a weight format the planner knows ({', '.join(dtypes.BYTES)})")
        if not isinstance(entry, dict):
            raise ModelchipError(f"{where}: expected an object, got {type(entry).__name__}")
        rates = _pairs(entry.get("bytes_per_s"), f"{where} bytes_per_s")
        if not rates:
            raise ModelchipError(f"{where}: bytes_per_s has no measurements")
        per_call = _pairs(entry.get("seconds_per_call", []), f"{where} seconds_per_call")
        kept = entry.get("kept", "packed")
        if kept not in KEPT:
            raise ModelchipError(f"{where}: kept {kept!r} is not one of {', '.join(KEPT)}")
        out.append(FormatStreaming(fmt, kept, str(entry.get("note", "")), rates, per_call))
    return tuple(out)


def _pairs(raw: object, where: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, list) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in raw):
        raise ModelchipError(f"{where}: expected a list of [rows, value] pairs")
    try:
        pairs = sorted((float(m), float(v)) for m, v in raw)
    except (TypeError, ValueError) as exc:
        raise ModelchipError(f"{where}: rows and values must be numbers ({exc})") from exc
    if any(m < 1 or v <= 0 for m, v in pairs):
        raise ModelchipError(f"{where}: rows must be >= 1 and values > 0")
    if len({m for m, _ in pairs}) != len(pairs):
        raise ModelchipError(f"{where}: a row count is listed twice")
    return tuple(pairs)


def lookup(tables: tuple[FormatStreaming, ...], weight_dtype: str) -> FormatStreaming | None:
    """The measured table of `weight_dtype` (any spelling `dtypes.canonical` takes), or None."""
    name = dtypes.canonical(weight_dtype)
    return next((t for t in tables if t.format == name), None)


def notes(tables: tuple[FormatStreaming, ...], weight_dtypes: list[str], source: str = "the profile") -> list[str]:
    """What a prediction on these tables should say about the packed formats it prices: a format the profile
    did not measure falls back to the float weight-streaming efficiency; a measured one the backend did not
    keep packed was measured as what it kept."""
    out = []
    for fmt in dict.fromkeys(dtypes.canonical(w) for w in weight_dtypes):
        if fmt not in PACKED:
            continue
        table = lookup(tables, fmt)
        if table is None:
            out.append(f"{source} has no measured {fmt} weight streaming (calibrated before per-format tables, or "
                       f"the backend takes no {fmt} weights): {fmt} weights are priced at their packed bytes over "
                       "the float weight-streaming efficiency")
        elif table.kept != "packed":
            out.append(f"{fmt} weights: the backend {table.kept} ({table.note}); their streaming was measured on "
                       "what it keeps, per packed byte")
    return out


def from_profile(path: str | Path, precision) -> tuple[tuple[FormatStreaming, ...], list[str]]:
    """(the profile's streaming tables, the notes on pricing `precision`'s weight formats with them). The
    profile was already read and checked as a chip by `load_profile`."""
    tables = parse(json.loads(Path(path).read_text()).get("weight_streaming"), str(path))
    p = precision
    return tables, notes(tables, [w for w in (p.weight, p.attention_weight, p.lm_head_weight) if w], f"profile {path}")
