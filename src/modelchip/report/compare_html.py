"""The `compare` report: one self-contained HTML file with the paper's tables and three charts."""

from __future__ import annotations

import datetime as _dt
from html import escape

from modelchip import __version__
from modelchip.report import svg
from modelchip.report.text import sci, usd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:0.85em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.best{background:#e8f4e8;font-weight:600}.note{color:#555;font-size:0.85em}
svg .title{font-size:14px;font-weight:600;text-anchor:middle}svg .tick{font-size:10px;fill:#444}
svg .label{font-size:11px;fill:#333}svg .legend{font-size:11px}svg .vlabel{font-size:9px;fill:#333}
svg .grid{stroke:#eee}svg .axis{stroke:#888}
"""

# Marks a chart rendered when layout gives its marks a size: checked by the report test in a real browser.
CHECK = """
<script>
window.addEventListener('load', function () {
  var n = 0;
  document.querySelectorAll('svg.chart').forEach(function (c) {
    var ok = Array.prototype.some.call(c.querySelectorAll('.mark'), function (m) {
      var b = m.getBBox(); return b.width > 0 || b.height > 0; });
    if (ok) n += 1;
  });
  document.body.setAttribute('data-charts-rendered', String(n));
});
</script>
"""


def _ctx(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _accounting_table(result: dict, context: int) -> str:
    rows = [r for r in result["rows"] if r["context"] == context]
    head = ("<tr><th>model</th><th>A: KV/state bytes</th><th>B: attention FLOPs</th><th>C: linear FLOPs</th>"
            "<th>D: FFN FLOPs</th><th>B/A (FLOP/byte)</th><th>weight bytes</th></tr>")
    body = "".join(
        f"<tr><td>{escape(r['model'])}</td><td>{sci(r['kv_bytes'])}</td><td>{sci(r['attention_flops'])}</td>"
        f"<td>{sci(r['linear_flops'])}</td><td>{sci(r['ffn_flops'])}</td>"
        f"<td>{r['arithmetic_intensity']:.0f}</td><td>{sci(r['weight_bytes'])}</td></tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def _cost_table(result: dict, context: int) -> str:
    chips = [c for c in result["chips"] if "usd_per_flop" in result["chips"][c]]
    rows = [r for r in result["rows"] if r["context"] == context]
    head = ("<tr><th>model</th>" + "".join(f"<th>attention {escape(c)}</th>" for c in chips)
            + "".join(f"<th>FFN {escape(c)}</th>" for c in chips) + "<th>best split</th><th>total</th></tr>")
    body = []
    for r in rows:
        best = r["best"] or {}
        cells = []
        for part, key in (("attention", "attention_chip"), ("ffn", "ffn_chip")):
            for c in chips:
                cls = ' class="best"' if best.get(key) == c else ""
                cells.append(f"<td{cls}>{usd(r['cost'][c][part])}</td>")
        split = f"{best.get('attention_chip', '-')} + {best.get('ffn_chip', '-')}"
        body.append(f"<tr><td>{escape(r['model'])}</td>{''.join(cells)}<td>{escape(split)}</td>"
                    f"<td>{usd(best.get('total'))}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _chip_table(result: dict) -> str:
    head = ("<tr><th>chip</th><th>USD/hour</th><th>compute</th><th>peak FLOP/s</th><th>bandwidth B/s</th>"
            "<th>USD/FLOP</th><th>USD/byte</th><th>ridge FLOP/byte</th></tr>")
    body = []
    for cid, c in result["chips"].items():
        if "usd_per_flop" not in c:
            body.append(f"<tr><td>{escape(cid)}</td><td colspan=7>{escape(c['unpriced'])}</td></tr>")
            continue
        body.append(f"<tr><td>{escape(cid)}</td><td>{c['usd_per_hour']:.2f}</td><td>{c['compute_dtype']}</td>"
                    f"<td>{sci(c['peak_flops'])}</td><td>{sci(c['bandwidth'])}</td><td>{sci(c['usd_per_flop'])}</td>"
                    f"<td>{sci(c['usd_per_byte'])}</td><td>{c['ridge']:.0f}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _kv_chart(result: dict) -> str:
    contexts = result["settings"]["contexts"]
    models = list(result["models"])
    series = {}
    for ctx in contexts:
        by_model = {r["model"]: r["kv_bytes"] / 1e9 for r in result["rows"] if r["context"] == ctx}
        series[f"{_ctx(ctx)} context"] = [by_model.get(m) for m in models]
    return svg.bar_chart("KV cache / state bytes read per decoded token", models, series, "GB per token")


def _cost_chart(result: dict, context: int) -> str:
    chips = [c for c in result["chips"] if "usd_per_flop" in result["chips"][c]]
    rows = [r for r in result["rows"] if r["context"] == context]
    models = [r["model"] for r in rows]
    series = {f"all on {c}": [r["cost"][c]["attention"] + r["cost"][c]["ffn"] for r in rows] for c in chips}
    series["AFD: best split"] = [r["best"]["total"] if r["best"] else None for r in rows]
    return svg.bar_chart(f"Decode cost per chip, {_ctx(context)} context", models, series,
                         "USD per 1M decoded tokens")


def _roofline_chart(result: dict) -> str:
    lines, points = {}, []
    chips = [(cid, c) for cid, c in result["chips"].items() if "peak_flops" in c]
    # one marker per distinct intensity; a model whose intensity varies with context gets one per context
    by_model: dict[str, dict[int, float]] = {}
    for r in result["rows"]:
        by_model.setdefault(r["model"], {})[r["context"]] = r["arithmetic_intensity"]
    groups: dict[float, list[str]] = {}
    for model, per_ctx in by_model.items():
        if len({round(v, 6) for v in per_ctx.values()}) == 1:
            groups.setdefault(float(f"{next(iter(per_ctx.values())):.3g}"), []).append(model)
        else:
            for ctx, v in per_ctx.items():
                groups.setdefault(float(f"{v:.3g}"), []).append(f"{model} {_ctx(ctx)}")
    vlines = [(f"{', '.join(names)} ({x:g})", x) for x, names in sorted(groups.items())]
    ridges = [c["peak_flops"] / c["bandwidth"] for _, c in chips]
    lo = min([*groups, *ridges, 10.0]) / 4
    hi = max([*groups, *ridges]) * 4
    for i, (cid, c) in enumerate(chips):
        peak, bw = c["peak_flops"], c["bandwidth"]
        ridge = peak / bw
        lines[f"{cid} (ridge {ridge:.0f})"] = [(lo, bw * lo), (ridge, peak), (hi, peak)]
        points.append((f"{cid} ridge point", ridge, peak, i))
    return svg.loglog_chart("Attention arithmetic intensity against each chip's roofline", lines, points,
                            "attention FLOPs per KV byte", "attainable FLOP/s", vlines=vlines)


def render(result: dict) -> str:
    s = result["settings"]
    contexts = s["contexts"]
    sections = [
        f"<h1>modelchip compare</h1><p class=note>modelchip {__version__}, "
        f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}. Phase {s['phase']}; weights {s['weight_dtype']}, "
        f"KV {s['kv_dtype']}, compute {s['compute_dtype']}; convention <b>{s['convention']}</b>"
        + (f"; overrides {escape(', '.join(s['sets']))}" if s["sets"] else "") + ". "
        "Bytes and FLOPs are per decoded token; cost is USD per 1M decoded tokens with the Step-3 paper's "
        "model: attention = max(B&middot;$/FLOP, A&middot;$/byte) + C&middot;$/FLOP, FFN = D&middot;$/FLOP.</p>",
        "<h2>KV cache</h2>", _kv_chart(result),
    ]
    for ctx in contexts:
        sections += [f"<h2>Cost at {_ctx(ctx)} context</h2>", _cost_chart(result, ctx), _cost_table(result, ctx),
                     f"<h2>Per-token accounting at {_ctx(ctx)} context</h2>", _accounting_table(result, ctx)]
    sections += ["<h2>Roofline</h2>",
                 "<p class=note>A model whose attention intensity sits left of a chip's ridge point is "
                 "memory-bound on it: its attention cost follows the chip's $/byte, not its $/FLOP.</p>",
                 _roofline_chart(result), "<h2>Chips</h2>", _chip_table(result)]
    models = "".join(
        f"<tr><td>{escape(mid)}</td><td>{escape(m['family'])}</td><td>{m['layers']}</td>"
        f"<td>{m['params_total'] / 1e9:.1f}B</td><td>{m['params_active'] / 1e9:.1f}B</td>"
        f"<td>{m['kv_cache_bytes_per_token']:,.0f}</td>"
        f"<td>{escape(', '.join(f'{k}: {v}' for k, v in m['attention'].items()))}</td>"
        f"<td style='text-align:left'>{escape(m['source'])}</td></tr>"
        for mid, m in result["models"].items()
    )
    sections += ["<h2>Models</h2>", "<table><tr><th>model</th><th>family</th><th>layers</th><th>params</th>"
                 "<th>active</th><th>KV bytes/token</th><th>attention layers</th><th>config source</th></tr>"
                 f"{models}</table>"]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>modelchip compare</title>"
            f"<style>{CSS}</style></head><body>{''.join(sections)}{CHECK}</body></html>")
