"""`modelchip models` and `modelchip kv`: model presets, a model's spec and parameters, KV cache what-ifs."""

from __future__ import annotations

from modelchip.cli import common
from modelchip.cost import accounting
from modelchip.spec import dtypes, load_model, presets
from modelchip.spec.config import split_reference


def register(sub) -> None:
    p = sub.add_parser("models", help="list the built-in model presets, or show one model's spec",
                       description="Without MODEL: the presets. With MODEL (preset id, config.json, checkpoint "
                                   "dir or hub id): layers, attention and FFN design, parameter counts, KV cache.")
    p.add_argument("model", nargs="?", help="model to show (MODEL:key=value,... for a what-if)")
    common.add_sets(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_models)

    k = sub.add_parser("kv", help="KV cache bytes per token of models or what-if variants, side by side",
                       description="Bytes one cached token takes across all layers, and the reduction against "
                                   "the first model. Example: modelchip kv step3:attention=mha step3 "
                                   "step3:attention=mfa-kr --kv-dtype bf16")
    k.add_argument("models", nargs="+", metavar="MODEL")
    k.add_argument("--kv-dtype", default="bf16", help="cache format (default bf16)")
    k.add_argument("--json", action="store_true", help="print JSON")
    k.set_defaults(func=run_kv)


def describe(ref: str, sets=()) -> dict:
    spec = load_model(ref, sets)
    p = accounting.params(spec)
    layer_kinds = {}
    for layer in spec.layers:
        a, f = layer.attention, layer.ffn
        key = (f"{a.kind} h={a.num_heads} kv={a.num_kv_heads} d={a.head_dim}"
               + (f" q_rank={a.q_lora_rank}" if a.q_lora_rank else "")
               + (f" latent={a.kv_lora_rank}+{a.qk_rope_head_dim}" if a.kind == "mla" else "")
               + (f" window={a.window}" if a.window else "")
               + (f" kv_dtype={a.kv_dtype}" if a.kv_dtype else ""),
               f"dense {f.intermediate_size}" if f.kind == "dense" else
               f"moe {f.num_experts}x{f.intermediate_size} top-{f.top_k}"
               + (f" + shared {f.shared_intermediate_size}" if f.shared_intermediate_size else ""))
        layer_kinds[key] = layer_kinds.get(key, 0) + 1
    return {
        "model": ref, "name": spec.name, "family": spec.family, "hidden_size": spec.hidden_size,
        "vocab_size": spec.vocab_size, "layers": spec.num_layers, "params_total": p.total,
        "params_active": p.active,
        "kv_bytes_per_token_bf16": accounting.kv_cache_bytes_per_token(spec, "bf16"),
        "kv_bytes_per_token_fp8": accounting.kv_cache_bytes_per_token(spec, "fp8"),
        "layer_kinds": [{"attention": a, "ffn": f, "count": n} for (a, f), n in layer_kinds.items()],
        "source": spec.source,
    }


def _count(n: float) -> str:
    return f"{n / 1e12:.2f}T" if n >= 1e12 else f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def run_models(args) -> int:
    from modelchip.report.text import render

    if args.model:
        d = describe(args.model, args.sets)
        if args.json:
            common.print_json(d)
            return 0
        print(f"{d['name']}  (model_type {d['family']}; config: {d['source']})")
        print(f"hidden {d['hidden_size']}, vocab {d['vocab_size']}, {d['layers']} layers; "
              f"params {_count(d['params_total'])} total, {_count(d['params_active'])} active per token")
        print(f"KV cache per token: {d['kv_bytes_per_token_bf16']:,.0f} bytes in BF16, "
              f"{d['kv_bytes_per_token_fp8']:,.0f} in 8-bit")
        print(render(["layers", "attention", "ffn"],
                     [[k["count"], k["attention"], k["ffn"]] for k in d["layer_kinds"]]))
        return 0
    rows, out = [], []
    for pid, p in sorted(presets().items()):
        d = describe(pid)
        out.append({**d, "hf_repo": p.hf_repo, "confidence": p.confidence})
        rows.append([pid, d["family"], d["layers"], _count(d["params_total"]), _count(d["params_active"]),
                     f"{d['kv_bytes_per_token_bf16']:,.0f}", p.confidence, p.hf_repo])
    if args.json:
        common.print_json(out)
        return 0
    print(render(["id", "model_type", "layers", "params", "active", "KV B/token bf16", "conf", "hf repo"], rows,
                 title="Model presets (configs stored with their source; `modelchip models ID` for details)"))
    return 0


def run_kv(args) -> int:
    from modelchip.report.text import render

    kv_dtype = dtypes.canonical(args.kv_dtype)
    rows = []
    for ref in args.models:
        spec = load_model(ref)
        rows.append({"model": ref, "name": spec.name, "kv_dtype": kv_dtype,
                     "bytes_per_token": accounting.kv_cache_bytes_per_token(spec, kv_dtype),
                     "base": split_reference(ref)[0]})
    base = rows[0]["bytes_per_token"]
    for r in rows:
        r["reduction_vs_first"] = 1 - r["bytes_per_token"] / base if base else None
    if args.json:
        common.print_json(rows)
        return 0
    print(render(["model", f"KV bytes/token ({kv_dtype})", "vs first"],
                 [[r["model"], f"{r['bytes_per_token']:,.0f}",
                   "-" if r is rows[0] else f"{-100 * r['reduction_vs_first']:+.1f}%"] for r in rows]))
    return 0
