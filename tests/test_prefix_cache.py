"""Prefill with a cached prefix: the computed tokens attend over the whole prompt, the prefix is read from the
cache and not computed, and throughput counts computed tokens. Checked against the causal sum written out
from the model's own shapes in float64, not against the accounting the deploy model reuses."""

import json

import pytest

from modelchip.cli.main import main
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.cost.systems import system_for
from modelchip.errors import ModelchipError
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip

PREC = Precision(weight="fp8", kv="bf16")
MODEL = "llama-3.1-8b"


def _prefill(prompt: int, cached: int = 0, batch: int = 2):
    chip = get_chip("h100")
    d = Deployment(chip=chip, chips=1, strategy="tp", batch=batch, context=1, phase="prefill", prompt_len=prompt,
                   cached_prefix=cached, precision=PREC, system=system_for(chip))
    return evaluate(model_cost(load_model(MODEL), PREC), d)


def test_computed_tokens_attend_over_the_whole_prompt():
    spec = load_model(MODEL)
    a = spec.layers[0].attention
    prompt, cached, batch = 4096, 3072, 2
    # position i (1-based) attends to i tokens: scores and values, 2 FLOPs per multiply-add, every layer
    flops = sum(2.0 * a.num_heads * i * (a.head_dim + a.v_head_dim) for i in range(cached + 1, prompt + 1))
    flops *= len(spec.layers) * batch
    peak = get_chip("h100").peak("bf16")
    # prefill attention on Hopper runs at FlashAttention-3's measured 740 TFLOPS of H100's 989 (arXiv 2407.08608)
    expected_ms = flops / (peak * 740 / 989) * 1e3
    got = _prefill(prompt, cached, batch)
    assert got.breakdown_ms["attention_core"] == pytest.approx(expected_ms, rel=1e-9)
    # the same prompt computed in full attends positions 1..4096
    full = sum(2.0 * a.num_heads * i * (a.head_dim + a.v_head_dim) for i in range(1, prompt + 1))
    full *= len(spec.layers) * batch
    assert _prefill(prompt, 0, batch).breakdown_ms["attention_core"] == pytest.approx(
        full / (peak * 740 / 989) * 1e3, rel=1e-9)


def test_throughput_counts_computed_tokens_and_memory_holds_the_whole_prompt():
    cached = _prefill(4096, 3072)
    assert cached.tokens_per_s_per_chip == pytest.approx(2 * 1024 / (cached.ttft_ms / 1e3))
    full, fresh = _prefill(4096), _prefill(1024)
    assert cached.memory_gb["kv_cache"] == pytest.approx(full.memory_gb["kv_cache"])  # the cache holds 4096
    # 1024 computed tokens over a 4096-token context: cheaper than computing all 4096, dearer than a fresh
    # 1024-token prompt, whose tokens see at most 1024 positions
    assert fresh.ttft_ms < cached.ttft_ms < full.ttft_ms
    assert cached.breakdown_ms["attention_proj"] == pytest.approx(fresh.breakdown_ms["attention_proj"])
    assert _prefill(4096, 0).as_dict() == full.as_dict()


@pytest.mark.parametrize(("kw", "message"), [
    (dict(cached=4096), r"\[0, 4096\)"),
    (dict(cached=-1), r"\[0, 4096\)"),
])
def test_cached_prefix_must_leave_a_token_to_compute(kw, message):
    with pytest.raises(ModelchipError, match=message):
        _prefill(4096, **kw)


def test_cached_prefix_is_a_prefill_setting():
    chip = get_chip("h100")
    d = Deployment(chip=chip, chips=1, strategy="tp", batch=2, context=4096, cached_prefix=100, precision=PREC)
    with pytest.raises(ModelchipError, match="applies to prefill"):
        evaluate(model_cost(load_model(MODEL), PREC), d)


def test_predict_and_plan_take_cached_prefix(capsys, tmp_path):
    args = ["predict", "--model", MODEL, "--chip", "h100", "--num-chips", "1", "--strategy", "tp", "--batch", "2",
            "--phase", "prefill", "--prompt-len", "4096", "--context", "4096", "--json"]
    assert main([*args, "--cached-prefix", "3072"]) == 0
    with_cache = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    without = json.loads(capsys.readouterr().out)
    assert with_cache["ttft_ms"] < without["ttft_ms"]
    assert main(["plan", "--model", MODEL, "--chip", "h100", "--counts", "1", "--prompt-len", "512",
                 "--cached-prefix", "600", "--json", "--out", str(tmp_path / "p.html")]) == 2
    assert "needs a longer --prompt-len" in capsys.readouterr().err
    assert main(["plan", "--model", MODEL, "--chip", "h100", "--counts", "1", "--prompt-len", "4096",
                 "--cached-prefix", "3072", "--kv-dtypes", "bf16", "--ttft-slo-ms", "1000", "--json",
                 "--out", str(tmp_path / "p.html")]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["ttft_ms"] == pytest.approx(
        _prefill(4096, 3072, batch=1).ttft_ms)


def test_serving_with_a_cached_prefix_spares_the_prefill_not_the_decode():
    """A benchmark that replays the same prompts (vLLM's benchmark_latency with V1's default prefix cache)
    prefills only the uncached tail, while every decode step still reads the whole prompt's KV cache: the
    round is the tail's prefill (which samples the first token) plus output_len - 1 decode steps over the full
    context."""
    from dataclasses import replace

    from modelchip.cost import serving
    chip = get_chip("h100")
    cost = model_cost(load_model(MODEL), PREC)
    base = Deployment(chip=chip, chips=1, strategy="tp", batch=1, context=1, precision=PREC, system=system_for(chip))
    prompt, out, cached, conc = 2048, 256, 2032, 8
    s = serving.serve(cost, replace(base, cached_prefix=cached), prompt, out, concurrency=conc)
    cold = serving.serve(cost, base, prompt, out, concurrency=conc)
    # the decode step is the same as without a cache: context prompt + out/2, nothing cached
    dec = evaluate(cost, replace(base, phase="decode", batch=conc, context=prompt + out // 2))
    assert s.decode.tpot_ms == pytest.approx(dec.tpot_ms, rel=1e-12)
    assert s.decode.tpot_ms == pytest.approx(cold.decode.tpot_ms, rel=1e-12)
    # the prefill computes 16 tokens per prompt over a 2048-token context
    pre = evaluate(cost, replace(base, phase="prefill", batch=conc, prompt_len=prompt, cached_prefix=cached))
    assert s.prefill.ttft_ms == pytest.approx(pre.ttft_ms, rel=1e-12)
    assert s.prefill.ttft_ms < cold.prefill.ttft_ms / 10
    # output tokens/s by hand: conc sequences x out tokens over (prefill, which samples the first token,
    # + out - 1 decode steps)
    assert s.output_tokens_per_s == pytest.approx(conc * out / ((pre.ttft_ms + (out - 1) * dec.tpot_ms) / 1e3),
                                                  rel=1e-12)
