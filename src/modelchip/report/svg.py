"""Tiny inline-SVG charts, so a report is one self-contained HTML file that needs no network to view."""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-2:
        return f"{v:.0e}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
    return f"{v:g}"


def _legend(names: list[str], x: float, y: float) -> list[str]:
    out = []
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{x}" y="{y + i * 16}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 14}" y="{y + i * 16 + 9}" class="legend">{escape(name)}</text>')
    return out


def bar_chart(title: str, categories: list[str], series: dict[str, list[float | None]], ylabel: str,
              width: int = 860, height: int = 340) -> str:
    """Grouped vertical bars: one group per category, one bar per series."""
    left, right, top, bottom = 70, 190, 30, 90
    pw, ph = width - left - right, height - top - bottom
    values = [v for vs in series.values() for v in vs if v is not None]
    ymax = _nice_max(max(values, default=1.0))
    names = list(series)
    group = pw / max(len(categories), 1)
    bar = group * 0.8 / max(len(names), 1)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{width / 2}" y="18" class="title">{escape(title)}</text>']
    for i in range(6):
        v = ymax * i / 5
        y = top + ph - ph * v / ymax
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_fmt(v)}</text>')
    for ci, cat in enumerate(categories):
        gx = left + ci * group + group * 0.1
        for si_, name in enumerate(names):
            v = series[name][ci]
            if v is None:
                continue
            h = ph * v / ymax
            x = gx + si_ * bar
            parts.append(f'<rect class="mark" x="{x:.1f}" y="{top + ph - h:.1f}" width="{max(bar - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="{PALETTE[si_ % len(PALETTE)]}">'
                         f'<title>{escape(cat)} / {escape(name)}: {v:.4g}</title></rect>')
        cx = left + ci * group + group / 2
        parts.append(f'<text x="{cx:.1f}" y="{top + ph + 12}" class="tick" text-anchor="end" '
                     f'transform="rotate(-35 {cx:.1f} {top + ph + 12})">{escape(cat)}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" class="axis"/>')
    parts.append(f'<text x="16" y="{top + ph / 2}" class="label" transform="rotate(-90 16 {top + ph / 2})" '
                 f'text-anchor="middle">{escape(ylabel)}</text>')
    parts += _legend(names, left + pw + 14, top)
    parts.append("</svg>")
    return "".join(parts)


def loglog_chart(title: str, lines: dict[str, list[tuple[float, float]]],
                 points: list[tuple[str, float, float, int]], xlabel: str, ylabel: str,
                 vlines: list[tuple[str, float]] = (), width: int = 860, height: int = 460) -> str:
    """Log-log plot: named polylines (one color each), labelled points (label, x, y, color index) and
    labelled vertical markers (label, x)."""
    left, right, top, bottom = 80, 170, 30, 50
    pw, ph = width - left - right, height - top - bottom
    xs = [x for pts in lines.values() for x, _ in pts] + [p[1] for p in points] + [v[1] for v in vlines]
    ys = [y for pts in lines.values() for _, y in pts] + [p[2] for p in points]
    x0, x1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)

    def px(x: float) -> float:
        return left + pw * (math.log10(x) - x0) / (x1 - x0)

    def py(y: float) -> float:
        return top + ph - ph * (math.log10(y) - y0) / (y1 - y0)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{width / 2}" y="18" class="title">{escape(title)}</text>']
    for e in range(x0, x1 + 1):
        parts.append(f'<line x1="{px(10**e):.1f}" x2="{px(10**e):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                     f'<text x="{px(10**e):.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">1e{e}</text>')
    for e in range(y0, y1 + 1):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(10**e):.1f}" y2="{py(10**e):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{py(10**e) + 4:.1f}" class="tick" text-anchor="end">1e{e}</text>')
    for i, (name, pts) in enumerate(lines.items()):
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="mark" points="{path}" fill="none" stroke="{PALETTE[i % len(PALETTE)]}" '
                     f'stroke-width="2"><title>{escape(name)}</title></polyline>')
    for label, x in vlines:  # labels run up along their line, so neighbouring lines do not collide
        parts.append(f'<line class="mark vline" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{top + ph}" '
                     f'stroke="#555" stroke-dasharray="4 3"><title>{escape(label)}: {x:.4g}</title></line>'
                     f'<text x="{px(x) - 3:.1f}" y="{top + ph - 4}" class="vlabel" '
                     f'transform="rotate(-90 {px(x) - 3:.1f} {top + ph - 4})">{escape(label)}</text>')
    for label, x, y, color in points:
        parts.append(f'<circle class="mark" cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" '
                     f'fill="{PALETTE[color % len(PALETTE)]}" stroke="#222" stroke-width="0.6">'
                     f'<title>{escape(label)}: x={x:.4g}, y={y:.4g}</title></circle>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 10}" class="label" text-anchor="middle">'
                 f'{escape(xlabel)}</text>')
    parts.append(f'<text x="16" y="{top + ph / 2}" class="label" transform="rotate(-90 16 {top + ph / 2})" '
                 f'text-anchor="middle">{escape(ylabel)}</text>')
    parts += _legend(list(lines), left + pw + 14, top)
    parts.append("</svg>")
    return "".join(parts)
