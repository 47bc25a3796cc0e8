"""Benchmark: the two grammar libraries structured output could use, llguidance and xgrammar, on the real
SmolLM2-135M-Instruct tokenizer (49,152 tokens), to choose one by measurement.

Per library: one-time tokenizer setup; per schema, the grammar compile time (cold) and the time to compute the
next-token bitmask at every step of a valid output (the tokens of a hand-written instance, encoded by the model's
own tokenizer), then to advance the matcher by that token. Not a timed unit test; record the JSON it prints in
BENCHMARKS.md.

    python benchmarks/bench_grammar.py                 # both libraries, 5 compile repeats
    python benchmarks/bench_grammar.py --libs llguidance
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SCHEMAS = {
    "json_object": ({"type": "object"}, {"city": "Paris", "population": 2102650, "tags": ["capital", "river"]}),
    "person": ({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"], "additionalProperties": False},
               {"name": "Ada Lovelace", "age": 36}),
    "order": ({"type": "object", "additionalProperties": False,
               "properties": {
                   "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                   "status": {"enum": ["pending", "shipped", "delivered"]},
                   "items": {"type": "array", "minItems": 1, "items": {
                       "type": "object", "additionalProperties": False, "required": ["sku", "qty"],
                       "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1},
                                      "price": {"type": "number"}}}},
                   "note": {"type": ["string", "null"]}},
               "required": ["id", "status", "items"]},
              {"id": "ABC-1234", "status": "shipped", "items": [{"sku": "pen", "qty": 3, "price": 1.5},
                                                                 {"sku": "ink", "qty": 1}], "note": None}),
    "tool_call_3_tools": ({"anyOf": [
        {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
         "properties": {"name": {"const": "get_weather"}, "arguments": {
             "type": "object", "additionalProperties": False, "required": ["city"],
             "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}},
        {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
         "properties": {"name": {"const": "search"}, "arguments": {
             "type": "object", "additionalProperties": False, "required": ["query"],
             "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}}}},
        {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
         "properties": {"name": {"const": "add"}, "arguments": {
             "type": "object", "additionalProperties": False, "required": ["a", "b"],
             "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}]},
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}),
}


def smollm2_tokenizer():
    from modelchip.runtime.loaders.resolve import alias_path
    from modelchip.runtime.tokenizer import Tokenizer
    from modelchip.spec.gguf_config import read_header

    metadata, _, _ = read_header(alias_path("smollm2-135m"))
    return Tokenizer.from_gguf(metadata)


def summarize(values: list[float]) -> dict:
    values = sorted(values)
    return {"median_us": round(statistics.median(values) * 1e6, 1),
            "p90_us": round(values[int(0.9 * (len(values) - 1))] * 1e6, 1),
            "max_us": round(values[-1] * 1e6, 1)}


def bench_llguidance(tok, repeat: int) -> dict:
    import llguidance
    import llguidance.numpy as llnp

    start = time.perf_counter()
    lltok = llguidance.LLTokenizer(tok.backend.to_str(), n_vocab=tok.vocab_size, eos_token=sorted(tok.eos_token_ids))
    out = {"version": llguidance.__version__, "tokenizer_setup_s": round(time.perf_counter() - start, 3),
           "schemas": {}}
    for name, (schema, instance) in SCHEMAS.items():
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        compiles = []
        for _ in range(repeat):
            start = time.perf_counter()
            matcher = llguidance.LLMatcher(lltok, grammar)
            compiles.append(time.perf_counter() - start)
            assert not matcher.is_error(), matcher.get_error()
        ids = tok.encode(json.dumps(instance), add_special_tokens=False)
        mask = llnp.allocate_token_bitmask(1, tok.vocab_size)
        masks, advances = [], []
        for t in ids:
            start = time.perf_counter()
            llnp.fill_next_token_bitmask(matcher, mask)
            masks.append(time.perf_counter() - start)
            assert (int(mask[0, t // 32]) >> (t % 32)) & 1, f"{name}: token {t} masked out"
            start = time.perf_counter()
            assert matcher.consume_token(t), matcher.get_error()
            advances.append(time.perf_counter() - start)
        llnp.fill_next_token_bitmask(matcher, mask)
        eos = min(tok.eos_token_ids)
        assert (int(mask[0, eos // 32]) >> (eos % 32)) & 1 and matcher.is_accepting()
        out["schemas"][name] = {"compile_ms": round(statistics.median(compiles) * 1e3, 2), "tokens": len(ids),
                                "mask": summarize(masks), "advance": summarize(advances)}
    return out


def bench_xgrammar(tok, repeat: int) -> dict:
    import xgrammar
    from xgrammar.tokenizer_info import TokenizerInfo

    start = time.perf_counter()
    vocab = [""] * tok.vocab_size
    for text, i in tok.backend.get_vocab(with_added_tokens=True).items():
        vocab[i] = text
    meta = TokenizerInfo._detect_metadata_from_hf(tok.backend.to_str())
    info = TokenizerInfo(vocab, vocab_type=meta["vocab_type"], vocab_size=tok.vocab_size,
                         stop_token_ids=sorted(tok.eos_token_ids), add_prefix_space=meta["add_prefix_space"])
    out = {"version": getattr(xgrammar, "__version__", None) or _dist_version("xgrammar"),
           "tokenizer_setup_s": round(time.perf_counter() - start, 3), "schemas": {}}
    for name, (schema, instance) in SCHEMAS.items():
        compiles = []
        for _ in range(repeat):
            compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)  # cold every time, as a new schema is
            start = time.perf_counter()
            compiled = compiler.compile_json_schema(json.dumps(schema), strict_mode=True)
            compiles.append(time.perf_counter() - start)
        matcher = xgrammar.GrammarMatcher(compiled)
        ids = tok.encode(json.dumps(instance), add_special_tokens=False)
        mask = xgrammar.allocate_token_bitmask(1, tok.vocab_size)
        masks, advances = [], []
        for t in ids:
            start = time.perf_counter()
            matcher.fill_next_token_bitmask(mask)
            masks.append(time.perf_counter() - start)
            assert (int(mask[0, t // 32]) >> (t % 32)) & 1, f"{name}: token {t} masked out"
            start = time.perf_counter()
            assert matcher.accept_token(t)
            advances.append(time.perf_counter() - start)
        matcher.fill_next_token_bitmask(mask)
        eos = min(tok.eos_token_ids)
        assert (int(mask[0, eos // 32]) >> (eos % 32)) & 1
        out["schemas"][name] = {"compile_ms": round(statistics.median(compiles) * 1e3, 2), "tokens": len(ids),
                                "mask": summarize(masks), "advance": summarize(advances)}
    return out


def bench_processor(tok) -> dict:
    """modelchip's own path (llguidance): GrammarLogitsProcessor on a float32 logits row, mask computed, unpacked
    and applied, per step of each schema's valid output."""
    import torch

    from modelchip.engine.sampling_params import StructuredOutputsParams
    from modelchip.engine.structured_output import StructuredOutputManager

    manager = StructuredOutputManager(tok, tok.vocab_size, tok.eos_token_ids)
    out = {}
    for name, (schema, instance) in SCHEMAS.items():
        start = time.perf_counter()
        proc = manager.processor(StructuredOutputsParams(json=schema))
        build = time.perf_counter() - start
        ids = tok.encode(json.dumps(instance), add_special_tokens=False)
        steps = []
        for i, t in enumerate(ids):
            row = torch.randn(tok.vocab_size)
            start = time.perf_counter()
            proc(ids[:i], row)
            steps.append(time.perf_counter() - start)
            proc.accept_token(t)
        out[name] = {"build_ms": round(build * 1e3, 2), "step": summarize(steps)}
    return out


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--libs", nargs="+", default=["llguidance", "xgrammar"])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_serving import machine

    tok = smollm2_tokenizer()
    result = {"machine": machine(), "vocab": tok.vocab_size, "date": time.strftime("%Y-%m-%d")}
    for lib in args.libs:
        result[lib] = {"llguidance": bench_llguidance, "xgrammar": bench_xgrammar}[lib](tok, args.repeat)
    result["modelchip_processor"] = bench_processor(tok)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
