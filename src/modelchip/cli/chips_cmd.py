"""`modelchip chips`: the chip and system catalog, with the source and confidence of every figure."""

from __future__ import annotations

from modelchip.cli import common
from modelchip.errors import unknown
from modelchip.report.text import render, si
from modelchip.spec.chips import chips, get_chip, systems
from modelchip.spec.kernels import kernel_catalog


def register(sub) -> None:
    p = sub.add_parser("chips", help="list the chip and system catalog (or show one entry's figures and sources)",
                       description="Chips and systems with peak FLOP/s per format, memory, links, power and "
                                   "price. UNVERIFIED figures are kept and flagged, never dropped.")
    p.add_argument("id", nargs="?", help="a chip or system id: show every figure with its source and tag")
    p.add_argument("--systems", action="store_true", help="list systems (scale-up domains) instead of chips")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _fig(f) -> dict | None:
    return None if f is None else {"value": f.value, "source": f.source, "tag": f.tag}


def chip_json(c) -> dict:
    return {
        "id": c.id, "name": c.name, "vendor": c.vendor, "kind": c.kind, "status": c.status, "notes": c.notes,
        "figures": {k: _fig(v) for k, v in c.figures().items()},
        "scale_up_link": c.scale_up.name, "scale_out_link": c.scale_out.name,
        "unverified": [k for k, v in c.figures().items() if not v.verified],
        "arch": c.arch, "measured_kernels": measured_kernels(c),
    }


def measured_kernels(c) -> list[dict]:
    """The kernel and collective measurements (spec/catalog/kernels.toml) the planner applies to this chip."""
    cat = kernel_catalog()
    out = []
    for mechanism, group in (("gemm", cat.gemm), ("attention", cat.attention), ("ep dispatch/combine", cat.ep_latency)):
        for t in group:
            if c.arch and c.arch in t.arch:
                label = "gemm streaming by weight size" if getattr(t, "weight_sweep", False) else mechanism
                out.append({"mechanism": label, "id": t.id, "measured_on": getattr(t, "measured_on", ""),
                            "tag": t.tag, "source": t.source})
    for t in cat.attention_layer:
        if any(chip == c.id for _, chip, _, _ in t.rows):
            out.append({"mechanism": "attention layer", "id": t.id, "measured_on": c.id, "tag": t.tag,
                        "source": t.source})
    for f in cat.fixed:
        if c.arch and any(a.split("/")[0] == c.arch for a in f.applies):
            out.append({"mechanism": f.name, "id": f.id, "measured_on": "", "tag": f.tag, "source": f.source})
    return out


def system_json(s) -> dict:
    return {
        "id": s.id, "name": s.name, "chip": s.chip.id, "chips": s.chips, "scale_up_domain": s.scale_up_domain,
        "scale_up_bandwidth": s.scale_up_bandwidth, "scale_out_bandwidth": s.scale_out_bandwidth,
        "power": _fig(s.power), "totals": {k: _fig(v) for k, v in s.totals.items()}, "notes": s.notes,
    }


def run(args) -> int:
    if args.id:
        return _show(args)
    if args.systems:
        table = systems()
        if args.json:
            common.print_json([system_json(s) for s in table.values()])
            return 0
        print(render(
            ["id", "name", "chip", "chips", "scale-up domain", "scale-up B/s", "scale-out B/s", "bf16 total"],
            [[s.id, s.name, s.chip.id, s.chips, s.scale_up_domain, si(s.scale_up_bandwidth),
              si(s.scale_out_bandwidth), si((s.chip.peak("bf16") or 0) * s.chips or None, "FLOP/s")]
             for s in sorted(table.values(), key=lambda s: s.id)]))
        return 0
    table = chips()
    if args.json:
        common.print_json([chip_json(c) for c in table.values()])
        return 0
    rows = []
    for c in sorted(table.values(), key=lambda c: (c.vendor, c.id)):
        unverified = [k for k, v in c.figures().items() if not v.verified]
        rows.append([c.id, c.vendor, si(c.peak("bf16")), si(c.peak("fp8")), si(c.peak("int8")),
                     si(c.memory_capacity.value if c.memory_capacity else None, "B"),
                     si(c.bandwidth, "B/s"), si(c.scale_up.effective, "B/s"), si(c.scale_out.effective, "B/s"),
                     f"{c.usd_per_hour:.2f}" if c.usd_per_hour else "-",
                     "UNVERIFIED" if c.status != "ok" else (f"{len(unverified)} unverified" if unverified else "ok")])
    print(render(["id", "vendor", "bf16", "fp8", "int8", "memory", "mem BW", "scale-up", "scale-out", "$/h",
                  "figures"], rows, title="Chips (dense peak FLOP/s; bandwidths per chip per direction)"))
    print("\n`modelchip chips ID` shows every figure with its source; `--systems` lists systems.")
    return 0


def _show(args) -> int:
    key = args.id.lower()
    if key in systems():
        s = systems()[key]
        if args.json:
            common.print_json(system_json(s))
            return 0
        print(f"{s.name} ({s.id}): {s.chips} x {s.chip.id}, scale-up domain {s.scale_up_domain}")
        print(f"scale-up {si(s.scale_up_bandwidth, 'B/s')} per chip, scale-out {si(s.scale_out_bandwidth, 'B/s')}")
        for k, f in s.totals.items():
            print(f"  {k}: {f.value:.4g}  [{f.tag}] {f.source}")
        if s.notes:
            print(s.notes)
        return 0
    if key not in chips():
        raise unknown("chip or system", args.id, list(chips()) + list(systems()))
    c = get_chip(key)
    if args.json:
        common.print_json(chip_json(c))
        return 0
    print(f"{c.name} ({c.id}), {c.vendor} {c.kind}, status {c.status}")
    print(render(["figure", "value", "tag", "source"],
                 [[k, f"{v.value:.4g}", v.tag, v.source] for k, v in c.figures().items()]))
    if c.notes:
        print(c.notes)
    kernels = measured_kernels(c)
    if kernels:
        print(f"\nMeasured kernels the planner applies ({c.arch or 'no architecture'}; spec/catalog/kernels.toml):")
        print(render(["mechanism", "table", "measured on", "tag"],
                     [[k["mechanism"], k["id"], k["measured_on"], k["tag"]] for k in kernels]))
    else:
        print("\nNo measured kernel tables apply: the planner uses efficiency.toml's defaults for this chip.")
    return 0
