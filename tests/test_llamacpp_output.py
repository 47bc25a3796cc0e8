"""The parsers behind benchmarks/bench_llamacpp.py, on llama.cpp output captured from the real tools (the
binaries themselves are not needed: building llama.cpp stays out of CI)."""

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "llamacpp_output.py"
_spec = importlib.util.spec_from_file_location("llamacpp_output", _PATH)
out = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(out)

# `llama-bench -m smollm2-135m-Q8_0.gguf -t 2 -p 128 -n 64 -r 3 -o json` as printed (rows trimmed of fields the
# parser does not read; llama-bench writes each row's fields in this order)
LLAMA_BENCH = """[
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "cpu_info": "AMD EPYC",
    "model_type": "llama ?B Q8_0",
    "model_size": 144755328,
    "n_threads": 2,
    "n_prompt": 128,
    "n_gen": 0,
    "n_depth": 0,
    "avg_ts": 501.25,
    "stddev_ts": 12.5,
    "samples_ns": [ 250000000, 260000000, 255000000 ],
    "samples_ts": [ 512.0, 492.3, 499.45 ]
  },
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "cpu_info": "AMD EPYC",
    "model_type": "llama ?B Q8_0",
    "model_size": 144755328,
    "n_threads": 2,
    "n_prompt": 0,
    "n_gen": 64,
    "n_depth": 0,
    "avg_ts": 101.0,
    "stddev_ts": 1.0,
    "samples_ns": [ 630000000, 640000000, 635000000 ],
    "samples_ts": [ 101.5, 100.0, 101.5 ]
  }
]
"""


def test_llama_bench_rows_are_named_as_llama_bench_names_them():
    rows = out.parse_llama_bench("main: loading model\n" + LLAMA_BENCH)  # log lines before the array are skipped
    assert [r["test"] for r in rows] == ["pp128", "tg64"]
    pp, tg = rows
    assert pp["samples_ts"] == [512.0, 492.3, 499.45] and pp["avg_ts"] == 501.25
    assert tg["n_threads"] == 2 and tg["model_type"] == "llama ?B Q8_0" and tg["build"] == "0c1e570 (1)"


def test_llama_bench_combined_and_depth_tests():
    row = json.loads(LLAMA_BENCH)[1] | {"n_prompt": 512, "n_gen": 128, "n_depth": 4096}
    (parsed,) = out.parse_llama_bench(json.dumps([row]))
    assert parsed["test"] == "pp512+tg128@d4096"


def test_llama_bench_refuses_what_it_cannot_read():
    with pytest.raises(out.LlamaCppOutputError, match="no JSON array"):
        out.parse_llama_bench("error: failed to load model")
    row = {k: v for k, v in json.loads(LLAMA_BENCH)[0].items() if k != "samples_ts"}
    with pytest.raises(out.LlamaCppOutputError, match="samples_ts"):
        out.parse_llama_bench(json.dumps([row]))


# `llama-batched-bench ... -npp 32 -ntg 64 -npl 16 --output-format jsonl`: loading logs, then one line per case
BATCHED = """llama_model_loader: loaded meta data with 33 key-value pairs
main: n_kv_max = 1552, n_batch = 2048
{"n_kv_max": 1552, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, \
"n_threads": 2, "n_threads_batch": 2, "pp": 32, "tg": 64, "pl": 16, "n_kv": 1536, "t_pp": 0.900000, \
"speed_pp": 568.888889, "t_tg": 2.048000, "speed_tg": 500.000000, "t": 2.948000, "speed": 521.031208}
"""


def test_batched_bench_reads_the_result_lines_only():
    (row,) = out.parse_batched_bench(BATCHED)
    assert row["pl"] == 16 and row["tg"] == 64 and row["n_threads"] == 2
    # speed_tg is pl * tg tokens over the decode time: check it against the line's own t_tg
    assert row["speed_tg"] == pytest.approx(row["pl"] * row["tg"] / row["t_tg"])


def test_batched_bench_without_results_is_an_error():
    with pytest.raises(out.LlamaCppOutputError, match="no result lines"):
        out.parse_batched_bench("main: error: failed to create the llama_context\n")


def test_server_completion_tokens_and_top_logprobs():
    body = {"content": " Paris.", "tokens": [7042, 30],
            "completion_probabilities": [
                {"id": 7042, "token": " Paris", "logprob": -0.1,
                 "top_logprobs": [{"id": 7042, "token": " Paris", "logprob": -0.1},
                                  {"id": 253, "token": " the", "logprob": -2.6}]},
                {"id": 30, "token": ".", "logprob": -0.3,
                 "top_logprobs": [{"id": 30, "token": ".", "logprob": -0.3}]}]}
    tokens, probs = out.parse_server_completion(body)
    assert tokens == [7042, 30]
    assert probs == [{7042: -0.1, 253: -2.6}, {30: -0.3}]
    assert out.parse_server_completion({"tokens": [1, 2]}) == ([1, 2], [{}, {}])
    with pytest.raises(out.LlamaCppOutputError, match="return_tokens"):
        out.parse_server_completion({"content": "text only"})


@pytest.mark.parametrize(("a", "b", "expected"), [
    ([1, 2, 3], [1, 2, 3], None),
    ([1, 2, 3], [1, 5, 3], 1),
    ([4], [5], 0),
    ([1, 2], [1, 2, 3], 2),     # one stream stopped early: the first missing position
    ([], [], None),
])
def test_first_divergence(a, b, expected):
    assert out.first_divergence(a, b) == expected
    assert out.first_divergence(b, a) == expected
