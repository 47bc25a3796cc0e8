"""Benchmark: modelchip against llama.cpp on the same GGUF files, same thread count, in one run (issue 16, item 5).

Needs llama.cpp built and the files made by benchmarks/build_llamacpp.sh (kept out of CI). For each format
(Q4_1, Q8_0, BF16, F32 of SmolLM2-135M-Instruct, all holding the Q4_1 file's values), interleaved format by
format:
- batch-1 decode: llama-bench `tg<N>` vs modelchip's engine decoding N tokens after a 1-token prompt;
- prefill of 128 tokens: llama-bench `pp128` vs modelchip's time to first token for a 128-token prompt;
- 16 concurrent sequences: llama-batched-bench's decode rate (S_TG: 16 x tg tokens over the decode time) vs
  the engine decoding 16 sequences together, after the same prompt lengths;
- greedy equality: the first 32 greedy tokens of several prompts from llama-server (temperature 0, the prompt
  given as token ids) vs modelchip on the same file; at a divergence, modelchip's top-2 logit margin there
  and the logit gap between its token and llama.cpp's (a tie or near-tie explains it), and llama.cpp's own.
  The end-of-sequence token ends a stream on both sides: llama.cpp's `ignore_eos` bans that token (its logit
  set to -inf) while modelchip's emits it and goes on, so with it the streams part at the first EOS the model
  ranks first, for no numeric reason (the first run of this script found exactly that).

modelchip runs as `LLM(path)` with its defaults (the fastest backend and dtype for this CPU), plus, for the F32
file, the cpu backend in float32, so bf16 and fp32 each meet llama.cpp at the same precision. What it actually
ran (backend, dtype, how its linear weights are held: packed bf16, or a GGUF block format once quantized
execution lands) is read off the loaded model and printed, never assumed. Every measurement is the best of
--repeat runs on each side, in fresh processes; the load average before and after each is recorded, since
other processes on the machine skew everything. On a shared machine, point MODELCHIP_CACHE at a directory of
your own, so that another process's kernel build in the shared cache cannot hold a lock the run waits on.

    benchmarks/build_llamacpp.sh /work/llamacpp
    python benchmarks/bench_llamacpp.py --llamacpp-dir /work/llamacpp            # markdown table
    python benchmarks/bench_llamacpp.py --llamacpp-dir /work/llamacpp --json     # and the raw JSON
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata
import json
import multiprocessing
import os
import random
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamacpp_output import (  # noqa: E402  (benchmarks/ is not a package)
    first_divergence,
    parse_batched_bench,
    parse_llama_bench,
    parse_server_completion,
)

FORMATS = ("Q4_1", "Q8_0", "BF16", "F32")
# issue 16's targets: modelchip / llama.cpp on the same file (decode = batch-1 tg; concurrent = 16 sequences)
TARGETS = {("Q8_0", "decode"): 1.0, ("Q8_0", "concurrent"): 1.2, ("Q4_1", "decode"): 0.8,
           ("BF16", "decode"): 1.0, ("F32", "decode"): 1.0}
# transformers runs the unquantized files at their own precision (it has no quantized GGUF execution)
TRANSFORMERS_DTYPE = {"BF16": "bfloat16", "F32": "float32"}
GREEDY_PROMPTS = ["The capital of France is", "Once upon a time, in a small village,",
                  "def fibonacci(n):", "The three primary colors are"]
GREEDY_CHAT = "What is the capital of France?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Random token ids (below 100 left out: special tokens live there), the same for every run with `seed`."""
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(n)]


# -- llama.cpp ----------------------------------------------------------------------------------------------------


def cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def run_tool(cmd: list[str], threads: int, timeout: float = 1800) -> tuple[str, float]:
    """The tool's stdout and stderr, and the CPU time it used per thread per second of wall time (near 1: it had
    the cores; llama.cpp's threads spin while they wait, so a low figure means the machine took them away)."""
    cpu, wall = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"bench_llamacpp: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    util = (cpu_seconds(resource.RUSAGE_CHILDREN) - cpu) / ((time.perf_counter() - wall) * threads)
    return proc.stdout + "\n" + proc.stderr, round(util, 2)


def llama_bench(binary: Path, model: Path, args) -> dict:
    out, util = run_tool([str(binary), "-m", str(model), "-t", str(args.threads), "-p", str(args.prefill),
                          "-n", str(args.decode_tokens), "-r", str(args.repeat), "-o", "json"]
                         + (["--repack", "0"] if args.no_repack else []), args.threads)
    rows = {r["test"]: r for r in parse_llama_bench(out)}
    pp, tg = rows[f"pp{args.prefill}"], rows[f"tg{args.decode_tokens}"]
    return {"decode_tok_s": round(max(tg["samples_ts"]), 2), "decode_mean_tok_s": round(tg["avg_ts"], 2),
            "prefill_tok_s": round(max(pp["samples_ts"]), 2), "prefill_mean_tok_s": round(pp["avg_ts"], 2),
            "model_type": tg["model_type"], "build": tg["build"], "n_threads": tg["n_threads"],
            "cpu_utilization": util}


def llama_batched_bench(binary: Path, model: Path, args) -> dict:
    ctx = args.concurrency * (args.batch_prompt_tokens + args.batch_decode_tokens) + 16
    best, best_util = None, 0.0
    for _ in range(args.repeat):
        out, util = run_tool([str(binary), "-m", str(model), "-t", str(args.threads), "-c", str(ctx),
                        "-npp", str(args.batch_prompt_tokens), "-ntg", str(args.batch_decode_tokens),
                        "-npl", str(args.concurrency), "--output-format", "jsonl"]
                        + (["--no-repack"] if args.no_repack else []), args.threads)
        (row,) = parse_batched_bench(out)
        if best is None or row["speed_tg"] > best["speed_tg"]:
            best, best_util = row, util
    return {"concurrent_decode_tok_s": round(best["speed_tg"], 2),
            "concurrent_prefill_tok_s": round(best["speed_pp"], 2),
            "cpu_utilization": best_util, "raw": best}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_greedy(binary: Path, model: Path, prompts: list[list[int]], args) -> list[dict]:
    """Greedy continuations from llama-server: the prompt as token ids (no tokenizer of llama.cpp's in between),
    temperature 0 (llama.cpp keeps only the largest logit), EOS ignored, no prompt cache."""
    port = free_port()
    proc = subprocess.Popen([str(binary), "-m", str(model), "-t", str(args.threads), "-c", "1024", "-np", "1",
                             "--host", "127.0.0.1", "--port", str(port)]
                            + (["--no-repack"] if args.no_repack else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"bench_llamacpp: llama-server exited ({proc.returncode}): "
                                 f"{proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("bench_llamacpp: llama-server did not become healthy within 300 s")
            time.sleep(0.5)
        out = []
        for ids in prompts:
            body = json.dumps({"prompt": ids, "n_predict": args.greedy_tokens, "temperature": 0.0,
                               "ignore_eos": False, "cache_prompt": False, "return_tokens": True,
                               "n_probs": 2}).encode()
            req = urllib.request.Request(f"{base}/completion", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                tokens, probs = parse_server_completion(json.load(r))
            out.append({"tokens": tokens, "top_logprobs": probs})
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- modelchip ----------------------------------------------------------------------------------------------------


def describe_linear(weight) -> str:
    """How a linear weight is held after the backend prepared it: a plain tensor's dtype, a quantized format's
    name, or a packed handle's dtype and layout."""
    import torch

    from modelchip.runtime.quant import QuantizedWeight

    if isinstance(weight, QuantizedWeight):
        return weight.format
    if isinstance(weight, torch.Tensor):
        return f"{str(weight.dtype).removeprefix('torch.')} (unpacked)"
    fmt = getattr(weight, "format", None)
    if isinstance(fmt, str):
        return fmt
    for value in vars(weight).values():  # a backend handle wrapping the quantized weight it was given
        if isinstance(value, QuantizedWeight):
            return f"{value.format} ({type(weight).__name__})"
    packed = getattr(weight, "packed", None)
    dtype = str(packed.dtype).removeprefix("torch.") if isinstance(packed, torch.Tensor) else "?"
    return f"{dtype} {getattr(weight, 'layout', type(weight).__name__)}"


def what_ran(llm) -> dict:
    counts: dict[str, int] = {}
    for module in llm.model.modules():
        for name in getattr(module, "LINEAR_WEIGHTS", ()):
            weight = getattr(module, name, None)
            if weight is not None:
                kind = describe_linear(weight)
                counts[kind] = counts.get(kind, 0) + 1
    backend = llm.ops.backend
    layers = (f"fused stack x{len(llm.model.layers)}" if getattr(llm.model, "fused_stack", None) is not None
              else f"op by op ({getattr(backend, 'unfused', 'the backend has no fused stack')})")
    if getattr(backend, "bf16_linear", None) == "bf16-pairs":  # which instructions run the bfloat16 pair blocks
        counts = {(f"{k} ({'amx' if backend.bf16_amx else 'vdpbf16ps'})" if k.endswith("bf16-pairs") else k): v
                  for k, v in counts.items()}
    return {"backend": llm.ops.name, "dtype": str(llm.dtype).removeprefix("torch."), "linear_weights": counts,
            "decoder_layers": layers, "weight_mb_as_loaded": round(sum(llm.parameter_bytes.values()) / 1e6, 1)}


def run_modelchip(path: str, backend: str | None, dtype: str | None, args) -> dict:
    """All three speed measurements and the greedy streams, in this (fresh) process."""
    import torch

    torch.set_num_threads(args.threads)
    from modelchip import LLM
    from modelchip.engine import EngineConfig, LLMEngine, SamplingParams

    t = time.perf_counter()
    llm = LLM(path, backend=backend, dtype=dtype)
    load_s = time.perf_counter() - t
    batch_tokens = max(args.prefill, args.concurrency * args.batch_prompt_tokens)
    engine = LLMEngine(llm, EngineConfig(kv_cache_tokens=2 * args.concurrency * (args.batch_prompt_tokens +
                                                                                 args.batch_decode_tokens + 8),
                                         max_num_seqs=max(64, args.concurrency),
                                         max_num_batched_tokens=batch_tokens))
    vocab = llm.vocab_size
    counter = iter(range(10**9))

    def run(prompts: list[list[int]], tokens: int) -> tuple[float, list]:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        start = time.monotonic()
        seqs = [engine.add_request(f"r{next(counter)}", p, params, arrival_time=start) for p in prompts]
        while engine.has_unfinished_requests():
            engine.step()
        return start, seqs

    decode, prefill, concurrent, concurrent_pp = [], [], [], []
    cpu, wall = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    with torch.inference_mode():
        run(random_prompts(2, 8, vocab, seed=99), 4)  # warm-up: first touch of weights and caches
        for i in range(args.repeat):
            # batch-1 decode: N steps after a 1-token prompt, as llama-bench's tg starts from an empty context
            _, (seq,) = run(random_prompts(1, 1, vocab, seed=i), args.decode_tokens + 1)
            decode.append(args.decode_tokens / (seq.last_token_time - seq.first_token_time))
            start, (seq,) = run(random_prompts(1, args.prefill, vocab, seed=100 + i), 1)
            prefill.append(args.prefill / (seq.first_token_time - start))
            start, seqs = run(random_prompts(args.concurrency, args.batch_prompt_tokens, vocab, seed=200 + i),
                              args.batch_decode_tokens + 1)
            first = max(s.first_token_time for s in seqs)  # every prompt is in; from here on, decode steps only
            last = max(s.last_token_time for s in seqs)
            concurrent.append(args.concurrency * args.batch_decode_tokens / (last - first))
            concurrent_pp.append(args.concurrency * args.batch_prompt_tokens / (first - start))
    util = (cpu_seconds(resource.RUSAGE_SELF) - cpu) / ((time.perf_counter() - wall) * args.threads)
    return {"ran": what_ran(llm), "load_s": round(load_s, 2), "cpu_utilization": round(util, 2),
            "decode_tok_s": round(max(decode), 2), "decode_runs": [round(x, 2) for x in decode],
            "prefill_tok_s": round(max(prefill), 2), "prefill_runs": [round(x, 2) for x in prefill],
            "concurrent_decode_tok_s": round(max(concurrent), 2),
            "concurrent_runs": [round(x, 2) for x in concurrent],
            "concurrent_prefill_tok_s": round(max(concurrent_pp), 2)}


# -- transformers ---------------------------------------------------------------------------------------------------


def run_transformers(path: str, dtype: str, args) -> dict:
    """transformers on the same file (its GGUF loader dequantizes to `dtype`), the same three measurements:
    each a difference of two `generate` calls (N + 1 tokens minus 1), so prefill is left out of decode rates."""
    import torch

    torch.set_num_threads(args.threads)
    import transformers

    file = Path(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name,
                                                              dtype=getattr(torch, dtype))
    model.eval()
    from bench_serving import fixed_length_generate

    vocab = model.config.vocab_size
    generate = fixed_length_generate(model)

    decode, prefill, concurrent = [], [], []
    cpu, wall = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    with torch.inference_mode():
        generate(random_prompts(2, 8, vocab, seed=99), 4)  # warm-up
        for i in range(args.repeat):
            one = random_prompts(1, 1, vocab, seed=i)
            decode.append(args.decode_tokens / (generate(one, args.decode_tokens + 1) - generate(one, 1)))
            prefill.append(args.prefill / generate(random_prompts(1, args.prefill, vocab, seed=100 + i), 1))
            batch = random_prompts(args.concurrency, args.batch_prompt_tokens, vocab, seed=200 + i)
            t_all = generate(batch, args.batch_decode_tokens + 1)
            concurrent.append(args.concurrency * args.batch_decode_tokens / (t_all - generate(batch, 1)))
    util = (cpu_seconds(resource.RUSAGE_SELF) - cpu) / ((time.perf_counter() - wall) * args.threads)
    return {"version": transformers.__version__, "dtype": dtype, "cpu_utilization": round(util, 2),
            "decode_tok_s": round(max(decode), 2), "prefill_tok_s": round(max(prefill), 2),
            "concurrent_decode_tok_s": round(max(concurrent), 2)}


def greedy_prompt_ids(path: str) -> tuple[list[list[int]], list[int]]:
    """The greedy prompts as token ids, by modelchip's tokenizer of the file (both sides then get the same ids),
    and the file's end-of-sequence ids."""
    from modelchip import LLM

    llm = LLM(path, backend="reference", dtype="float32")
    ids = [llm.tokenizer.encode(p, add_special_tokens=False) for p in GREEDY_PROMPTS]
    chat = llm.tokenizer.apply_chat_template([{"role": "user", "content": GREEDY_CHAT}], add_generation_prompt=True)
    return ids + [llm.tokenizer.encode(chat, add_special_tokens=False)], sorted(llm.eos_ids)


def modelchip_greedy(path: str, backend: str | None, dtype: str | None, prompts: list[list[int]],
                     reference: list[list[int]], args) -> list[dict]:
    """modelchip's greedy streams; where one departs from `reference` (llama.cpp's), the logits modelchip gives
    at that position: its top-2 margin and the gap between its token and llama.cpp's."""
    import torch

    torch.set_num_threads(args.threads)
    from modelchip import LLM
    from modelchip.engine import SamplingParams

    llm = LLM(path, backend=backend, dtype=dtype)
    params = SamplingParams(max_tokens=args.greedy_tokens, temperature=0.0)
    out = []
    for ids, theirs in zip(prompts, reference, strict=True):
        ours = without_eos(llm.generate([ids], params)[0].token_ids, llm.eos_ids)
        k = first_divergence(ours, theirs)
        row = {"tokens": ours, "first_divergence": k}
        if k is not None and k < min(len(ours), len(theirs)):
            logits = llm.logits(ids + ours[:k])[-1].float()
            top = torch.topk(logits, 2)
            row["top2_margin"] = round(float(top.values[0] - top.values[1]), 4)
            row["gap_to_llamacpp_token"] = round(float(logits[ours[k]] - logits[theirs[k]]), 4)
        out.append(row)
    return out


def without_eos(tokens: list[int], eos: set[int] | list[int]) -> list[int]:
    """A greedy stream up to its end-of-sequence token (which one side lists and the other may not)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


def in_child(fn, *args):
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


# -- the run --------------------------------------------------------------------------------------------------------


def modelchip_configs(fmt: str) -> list[tuple[str, str | None, str | None]]:
    """(label, backend, dtype) modelchip runs on a file: its defaults everywhere; fp32 also at llama.cpp's F32."""
    configs = [("default", None, None)]
    if fmt == "F32":
        configs.append(("cpu float32", "cpu", "float32"))
    return configs


def bench_format(fmt: str, model: Path, bins: Path, args) -> dict:
    res: dict = {"file": str(model), "load_before": load(), "modelchip": {}}
    for label, backend, dtype in [] if args.greedy_only else modelchip_configs(fmt):
        mc = in_child(run_modelchip, str(model), backend, dtype, args)
        res["modelchip"][label] = mc
        print(f"{fmt} modelchip {label} {mc}", file=sys.stderr)
    if not args.greedy_only:
        res["llama_bench"] = llama_bench(bins / "llama-bench", model, args)
        print(f"{fmt} llama-bench {res['llama_bench']}", file=sys.stderr)
        res["llama_batched_bench"] = llama_batched_bench(bins / "llama-batched-bench", model, args)
        print(f"{fmt} llama-batched-bench {res['llama_batched_bench']['concurrent_decode_tok_s']}", file=sys.stderr)
    if fmt in TRANSFORMERS_DTYPE and not (args.no_transformers or args.greedy_only):
        res["transformers"] = in_child(run_transformers, str(model), TRANSFORMERS_DTYPE[fmt], args)
        print(f"{fmt} transformers {res['transformers']}", file=sys.stderr)
    if args.greedy_tokens:
        prompts, eos = in_child(greedy_prompt_ids, str(model))
        theirs = llama_server_greedy(bins / "llama-server", model, prompts, args)
        for t in theirs:
            t["tokens"] = without_eos(t["tokens"], eos)
        res["greedy"] = {"prompts": prompts, "llamacpp": theirs, "modelchip": {}}
        for label, backend, dtype in modelchip_configs(fmt):
            ours = in_child(modelchip_greedy, str(model), backend, dtype, prompts, [t["tokens"] for t in theirs],
                            args)
            for o, t in zip(ours, theirs, strict=True):
                o["lengths"] = [len(o["tokens"]), len(t["tokens"])]  # shorter than asked: EOS came first
                k = o["first_divergence"]
                if k is not None and k < len(t["top_logprobs"]) and len(t["top_logprobs"][k]) == 2:
                    a, b = sorted(t["top_logprobs"][k].values(), reverse=True)
                    o["llamacpp_top2_margin"] = round(a - b, 4)
            res["greedy"]["modelchip"][label] = ours
            print(f"{fmt} greedy {label}: divergences {[o['first_divergence'] for o in ours]}", file=sys.stderr)
    res["load_after"] = load()
    return res


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def markdown(result: dict) -> str:
    args = argparse.Namespace(**result["settings"])
    lines = [f"CPU: {result['cpu']}; {args.threads} threads each side; {result['date']}; load average "
             f"{result['load_before']} before, {result['load_after']} after (other processes share this machine); "
             f"llama.cpp {result['llamacpp_build']}; torch {result['torch']}; transformers "
             f"{result.get('transformers', '-')}.", "",
             "| file | modelchip ran | measurement | modelchip tok/s | llama.cpp tok/s | ratio | target | CPU busy, "
             "modelchip / llama.cpp |", "|---|---|---|---|---|---|---|---|"]
    what = {"decode": (f"batch-1 decode (tg{args.decode_tokens})", "decode_tok_s", "llama_bench"),
            "prefill": (f"prefill {args.prefill} tokens (pp{args.prefill})", "prefill_tok_s", "llama_bench"),
            "concurrent": (f"{args.concurrency} sequences, decode (pp{args.batch_prompt_tokens}, "
                           f"tg{args.batch_decode_tokens})", "concurrent_decode_tok_s", "llama_batched_bench")}
    for fmt, res in result["formats"].items():
        for label, mc in res["modelchip"].items():
            ran = mc["ran"]
            weights = ", ".join(f"{k} x{v}" for k, v in ran["linear_weights"].items())
            desc = (f"{label}: {ran['backend']} {ran['dtype']}, linear weights {weights}, decoder layers "
                    f"{ran.get('decoder_layers', '?')}")
            for key, (name, field, tool) in what.items():
                ours, theirs = mc[field], res[tool][field]
                target = TARGETS.get((fmt, key))
                busy = f"{mc['cpu_utilization']} / {res[tool]['cpu_utilization']}"
                lines.append(f"| {fmt} | {desc} | {name} | {ours:.1f} | {theirs:.1f} | {ratio(ours, theirs)} | "
                             f"{'>= ' + str(target) if target else ''} | {busy} |")
                desc = ""
    tf_rows = [(fmt, res) for fmt, res in result["formats"].items() if "transformers" in res]
    if tf_rows:
        lines += ["", "transformers on the same files (its GGUF loader dequantizes; same measurements, same threads), "
                      "against modelchip's defaults (bf16 file) and cpu float32 (F32 file):", "",
                  "| file | transformers dtype | measurement | modelchip tok/s | transformers tok/s | ratio | "
                  "CPU busy, modelchip / transformers |", "|---|---|---|---|---|---|---|"]
        for fmt, res in tf_rows:
            tf = res["transformers"]
            mc = res["modelchip"]["cpu float32" if tf["dtype"] == "float32" else "default"]
            for name, field, _ in what.values():
                lines.append(f"| {fmt} | {tf['dtype']} | {name} | {mc[field]:.1f} | {tf[field]:.1f} | "
                             f"{ratio(mc[field], tf[field])} | {mc['cpu_utilization']} / {tf['cpu_utilization']} |")
    lines += ["", "Load average per file, before / after its measurements: " + "; ".join(
        f"{fmt} {res['load_before']} / {res['load_after']}" for fmt, res in result["formats"].items()) + "."]
    greedy = [(fmt, label, i, o) for fmt, res in result["formats"].items() if "greedy" in res
              for label, rows in res["greedy"]["modelchip"].items() for i, o in enumerate(rows)]
    if greedy:
        lines += ["", f"Greedy, first {args.greedy_tokens} tokens, modelchip vs llama-server (temperature 0) on the "
                      f"same file and prompt ids:", "",
                  "| file | modelchip | prompt | tokens before EOS, modelchip / llama.cpp | first divergence | "
                  "modelchip top-2 margin there | modelchip logit gap, its token - llama.cpp's | llama.cpp top-2 "
                  "logprob margin |", "|---|---|---|---|---|---|---|---|"]
        names = [*GREEDY_PROMPTS, f"chat: {GREEDY_CHAT}"]
        for fmt, label, i, o in greedy:
            k = o["first_divergence"]
            lengths = " / ".join(map(str, o.get("lengths", [])))
            lines.append(f"| {fmt} | {label} | {names[i]} | {lengths} | {'none' if k is None else k} | "
                         f"{o.get('top2_margin', '')} | {o.get('gap_to_llamacpp_token', '')} | "
                         f"{o.get('llamacpp_top2_margin', '')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llamacpp-dir", type=Path, default=Path("/work/llamacpp"),
                    help="build_llamacpp.sh's WORKDIR: binaries in build/bin, GGUF files in models/")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=64, help="batch-1 decode tokens (llama-bench -n)")
    ap.add_argument("--prefill", type=int, default=128, help="prefill tokens (llama-bench -p)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch-prompt-tokens", type=int, default=32, help="per sequence (llama-batched-bench -npp)")
    ap.add_argument("--batch-decode-tokens", type=int, default=64, help="per sequence (llama-batched-bench -ntg)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement on each side; the best counts")
    ap.add_argument("--greedy-tokens", type=int, default=32, help="0 skips the greedy comparison")
    ap.add_argument("--greedy-only", action="store_true", help="only the greedy comparison, no speed measurements")
    ap.add_argument("--no-repack", action="store_true",
                    help="run llama.cpp without weight repacking (no AMX or CPU_REPACK buffers): on AMX Xeons its "
                         "AMX matmul for Q8_0/Q4_x crashed at ldtilecfg in build 0c1e570 (llama.cpp PR #26954)")
    ap.add_argument("--no-transformers", action="store_true", help="skip transformers on the BF16 and F32 files")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--render", type=Path, help="print the tables of an earlier run's --json file, run nothing")
    args = ap.parse_args()
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return

    bins, models = args.llamacpp_dir / "build" / "bin", args.llamacpp_dir / "models"
    needed = [bins / b for b in ("llama-bench", "llama-batched-bench", "llama-server")]
    needed += [models / f"smollm2-135m-{f}.gguf" for f in args.formats]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"bench_llamacpp: missing {', '.join(missing)}; run benchmarks/build_llamacpp.sh "
                         f"{args.llamacpp_dir} first")
    result: dict = {"benchmark": "llamacpp", "cpu": cpu_model(), "threads": args.threads,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": load(),
                    "torch": importlib.metadata.version("torch"),
                    "transformers": importlib.metadata.version("transformers"),
                    "settings": {k: v for k, v in vars(args).items() if k not in ("llamacpp_dir", "json", "render")},
                    "formats": {}}
    for fmt in args.formats:
        result["formats"][fmt] = bench_format(fmt, models / f"smollm2-135m-{fmt}.gguf", bins, args)
        result["load_after"] = load()
        result["llamacpp_build"] = next((r["llama_bench"]["build"] for r in result["formats"].values()
                                         if "llama_bench" in r), "-")
        if args.json:  # after every file, so a long run stopped part-way keeps (and --render shows) what it has
            args.json.write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
