"""The `plan` report: Pareto chart of throughput vs TPOT, the best deployment's time breakdown, tables."""

from __future__ import annotations

from html import escape

from modelchip import __version__
from modelchip.report import svg
from modelchip.report.compare_html import CHECK, CSS


def render(out: dict, result) -> str:
    chips = sorted({c.chip for c in result.feasible})
    # one entry per chip, in the same order as the point colours, so the legend matches the points; the
    # polyline joins that chip's points on the overall Pareto frontier
    lines = {chip: [(c.tpot_ms, c.tokens_per_s_per_chip) for c in result.pareto if c.chip == chip] for chip in chips}
    sample = result.feasible[:: max(1, len(result.feasible) // 600)]  # keep the page light
    points = [(f"{c.label} batch {c.batch}", c.tpot_ms, c.tokens_per_s_per_chip, chips.index(c.chip))
              for c in sample + result.pareto]
    sections = [f"<h1>modelchip plan: {escape(out['model'])}</h1>",
                f"<p class=note>modelchip {__version__}; {out['evaluated']:,} deployments evaluated in "
                f"{out['seconds']:.2f} s; TPOT target {out['targets']['tpot_ms']} ms; objective "
                f"{out['targets']['objective']}.</p>"]
    if points:
        sections += ["<h2>Throughput vs TPOT</h2>",
                     svg.loglog_chart("Feasible deployments and the Pareto frontier", lines, points,
                                      "TPOT (ms)", "tokens/s per chip")]
    if result.best:
        b = result.best
        sections += [f"<h2>Best: {escape(b.label)}, batch {b.batch} per chip</h2>",
                     svg.bar_chart("Time per decode step by op group", list(b.breakdown_ms),
                                   {"ms": list(b.breakdown_ms.values())}, "ms per step")]
    rows = "".join(
        f"<tr><td>{escape(c.label)}</td><td>{c.batch}</td><td>{c.tpot_ms:.1f}</td>"
        f"<td>{c.tokens_per_s_per_chip:,.0f}</td><td>{'-' if c.usd_per_mtok is None else f'{c.usd_per_mtok:.3f}'}</td>"
        f"<td>{c.memory_gb_per_chip:.0f}</td></tr>" for c in result.best_per_config[:25])
    sections += ["<h2>Best configurations</h2><table><tr><th>deployment</th><th>batch/chip</th><th>TPOT ms</th>"
                 f"<th>tokens/s/chip</th><th>USD/1M</th><th>GB/chip</th></tr>{rows}</table>"]
    rej = "".join(f"<tr><td>{escape(k)}</td><td>{v:,}</td><td>{escape(result.examples.get(k, ''))}</td></tr>"
                  for k, v in result.rejected.items())
    sections += ["<h2>Why the others lost</h2><table><tr><th>reason</th><th>count</th><th>example</th></tr>"
                 f"{rej}</table>"]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>modelchip plan</title>"
            f"<style>{CSS}</style></head><body>{''.join(sections)}{CHECK}</body></html>")
