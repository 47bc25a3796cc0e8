"""Plain-text tables and number formats for the terminal."""

from __future__ import annotations

from collections.abc import Sequence


def sci(x: float | None, digits: int = 3) -> str:
    """1.47e11 style, the way the paper prints its tables."""
    if x is None:
        return "-"
    return f"{x:.{digits - 1}e}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def usd(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def si(x: float | None, unit: str = "") -> str:
    """1.2 G, 35.1 K: compact human-readable magnitudes."""
    if x is None:
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


def render(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """Align columns: text left, numbers right."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def fmt(row: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(row):
            numeric = c[:1].isdigit() or c[:1] in "-." and c[1:2].isdigit()
            out.append(c.rjust(widths[i]) if numeric and i else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [title] if title else []
    lines.append(fmt(list(headers)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(r) for r in cells)
    return "\n".join(lines)
