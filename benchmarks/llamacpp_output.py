"""Read what llama.cpp's tools print, and compare greedy token streams: the parts of bench_llamacpp.py that need
neither the llama.cpp binaries nor torch (tests/test_llamacpp_output.py checks them on captured output).
"""

from __future__ import annotations

import json


class LlamaCppOutputError(ValueError):
    """A llama.cpp tool printed something this parser does not understand."""


def parse_llama_bench(text: str) -> list[dict]:
    """`llama-bench -o json` output -> one dict per test: `test` ("pp128", "tg64", "pp128+tg64" or with
    "@d<depth>"), tokens/s mean, standard deviation and per-repetition samples, and what ran (model type,
    threads, build). llama-bench names a test pp<n> when it generates nothing, tg<n> when it prompts nothing."""
    start = text.find("[")
    if start < 0:
        raise LlamaCppOutputError(f"no JSON array in llama-bench output: {text[:200]!r}")
    try:
        rows = json.loads(text[start:])
    except json.JSONDecodeError as e:
        raise LlamaCppOutputError(f"llama-bench output is not JSON ({e}): {text[start:start + 200]!r}") from e
    out = []
    for row in rows:
        missing = {"n_prompt", "n_gen", "avg_ts", "samples_ts"} - set(row)
        if missing:
            raise LlamaCppOutputError(f"llama-bench row lacks {sorted(missing)}: {sorted(row)}")
        n_prompt, n_gen, depth = row["n_prompt"], row["n_gen"], row.get("n_depth", 0)
        if n_prompt and n_gen:
            test = f"pp{n_prompt}+tg{n_gen}"
        elif n_prompt:
            test = f"pp{n_prompt}"
        elif n_gen:
            test = f"tg{n_gen}"
        else:
            raise LlamaCppOutputError(f"llama-bench row with neither prompt nor generated tokens: {row}")
        out.append({
            "test": test + (f"@d{depth}" if depth else ""),
            "avg_ts": float(row["avg_ts"]),
            "stddev_ts": float(row.get("stddev_ts", 0.0)),
            "samples_ts": [float(x) for x in row["samples_ts"]],
            "model_type": row.get("model_type"),
            "n_threads": row.get("n_threads"),
            "build": f"{row.get('build_commit')} ({row.get('build_number')})",
            "cpu_info": row.get("cpu_info"),
        })
    return out


def parse_batched_bench(text: str) -> list[dict]:
    """`llama-batched-bench --output-format jsonl` output -> one dict per (pp, tg, pl) line. speed_tg is the
    decode rate over all `pl` sequences (pl * tg tokens over the decode time), speed_pp the prefill rate.
    Other lines (loading logs on the same stream) are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("{") and '"speed_tg"' in line):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LlamaCppOutputError(f"llama-batched-bench line is not JSON ({e}): {line[:200]!r}") from e
        out.append({k: row[k] for k in ("pp", "tg", "pl", "n_threads", "t_pp", "speed_pp", "t_tg", "speed_tg")
                    if k in row})
    if not out:
        raise LlamaCppOutputError(f"no result lines in llama-batched-bench output: {text[-300:]!r}")
    return out


def parse_server_completion(body: dict) -> tuple[list[int], list[dict[int, float]]]:
    """llama-server `/completion` response (with `return_tokens` and `n_probs`) -> the generated token ids and,
    per position, llama.cpp's own top log-probabilities {token id: logprob} (empty dicts without `n_probs`)."""
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise LlamaCppOutputError(f"llama-server response has no token ids (was return_tokens sent?): "
                                  f"{sorted(body)}")
    probs = [{int(p["id"]): float(p["logprob"]) for p in pos.get("top_logprobs", [])}
             for pos in body.get("completion_probabilities", [])]
    return tokens, probs or [{} for _ in tokens]


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where two greedy streams differ (a length difference counts), or None."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
