"""Measured mechanisms of the step time, each checked against hand arithmetic on the published benchmark it
comes from (DeepGEMM's README table, DeepEP's and pplx-kernels' latency tables, vLLM's NCCL timing, Meta's
launch figure), and the serving mode against a hand-computed steady state."""

import json
import math
import statistics
from dataclasses import replace

import pytest

from modelchip.cli.main import main
from modelchip.cost import kernel_model as km
from modelchip.cost import serving, validation
from modelchip.cost.attention_layers import layer_efficiency
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.efficiency import defaults
from modelchip.cost.model_cost import OPS_PER_ATTENTION, model_cost
from modelchip.cost.systems import system_for
from modelchip.errors import ModelchipError
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip

PREC = Precision(weight="fp8", kv="fp8")
H800_FP8, H800_BW = 1.979e15, 3.35e12  # NVIDIA H800 datasheet: the chip DeepGEMM's table was measured on


def _deploy(model: str, chip: str = "h100", **kw):
    c = get_chip(chip)
    precision = kw.pop("precision", PREC)
    base = dict(chip=c, chips=1, strategy="tp", batch=64, context=192, precision=precision, system=system_for(c))
    return model_cost(load_model(model), precision), Deployment(**{**base, **kw})


def _step(model: str, chip: str = "h100", **kw):
    return evaluate(*_deploy(model, chip, **kw))


# DeepGEMM README (commit 55ab91f), dense FP8 on H800 at M=64 and M=128: (TFLOPS, GB/s) per published shape
DEEPGEMM_M64 = [(206, 1688), (289, 2455), (219, 2143), (336, 2668), (287, 2320), (295, 2470)]
DEEPGEMM_M128 = [(352, 1509), (535, 2448), (358, 2103), (645, 2604), (533, 2221), (510, 2277)]


def _roofline_eff(rows):
    return statistics.median(max(tf * 1e12 / H800_FP8, gb * 1e9 / H800_BW) for tf, gb in rows)


def test_gemm_efficiency_is_the_benchmarks_median_roofline_fraction():
    e64, e128 = _roofline_eff(DEEPGEMM_M64), _roofline_eff(DEEPGEMM_M128)
    # at small M every published shape is bandwidth-bound: 2320 and 2455 GB/s of 3350 are the middle two
    assert e64 == pytest.approx((2320 + 2455) / 2 / 3350, rel=1e-3)
    assert km.gemm_efficiency(get_chip("h800"), "fp8", 64) == pytest.approx(e64)
    # below the smallest measured M the table's first value holds (a GEMV reads the same weights)
    assert km.gemm_efficiency(get_chip("h100"), "fp8", 1) == pytest.approx(e64)
    # between measured M: linear in log M
    mid = e64 + (e128 - e64) * math.log(96 / 64) / math.log(2)
    assert km.gemm_efficiency(get_chip("h20"), "fp8", 96) == pytest.approx(mid)
    # an architecture or dtype without a benchmark has none: the scalar defaults apply
    assert km.gemm_efficiency(get_chip("h100"), "bf16", 64) is None
    assert km.gemm_efficiency(get_chip("mtt-s4000"), "fp8", 64) is None


def test_batch1_projections_stream_weights_at_the_measured_small_m_efficiency():
    cost, d = _deploy("llama-3.1-8b", batch=1, context=1024)
    p = evaluate(cost, d)
    hand = cost.attn_params * 1.0 / 3.35e12 / _roofline_eff(DEEPGEMM_M64)  # FP8: one byte per weight
    assert p.breakdown_ms["attention_proj"] == pytest.approx(hand * 1e3, rel=1e-6)
    # a user-set efficiency wins over the table
    d2 = replace(d, efficiency=defaults().override({"memory": 0.5}))
    assert evaluate(cost, d2).breakdown_ms["attention_proj"] == pytest.approx(
        max(2 * cost.attn_params / (1.979e15 * defaults().gemm), cost.attn_params / (3.35e12 * 0.5)) * 1e3)


def test_attention_weights_kept_wider_than_the_experts():
    # 910C INT8 weights computed in BF16: no per-shape table, so the bytes decide the memory-bound batch-1 step
    kw = dict(batch=1 / 8, chips=8, context=1024)
    int8 = _step("deepseek-v3", "ascend-910c", precision=Precision(weight="int8", kv="bf16"), **kw)
    mixed = _step("deepseek-v3", "ascend-910c", precision=Precision(weight="int8", kv="bf16", attention_weight="bf16"),
                  **kw)
    # twice the bytes (BF16 vs INT8) for the projections; experts unchanged
    assert mixed.breakdown_ms["attention_proj"] == pytest.approx(2 * int8.breakdown_ms["attention_proj"], rel=1e-6)
    assert mixed.breakdown_ms["moe"] == pytest.approx(int8.breakdown_ms["moe"])
    assert mixed.memory_gb["weights"] > int8.memory_gb["weights"]


def test_ep_decode_dispatch_and_combine_take_the_measured_kernels_time():
    # DeepEP (H800, 128 tokens per rank) and pplx-kernels (H100, 1 token per rank) at EP64, in us
    dispatch = 121.0 + (173 - 121.0) * (64 - 1) / (128 - 1)
    combine = 58.6 + (314 - 58.6) * (64 - 1) / (128 - 1)
    p = _step("deepseek-v3", "h800", chips=64, strategy="ep", batch=64, context=4096, redundant_experts=0)
    assert p.breakdown_ms["communication"] == pytest.approx(58 * (dispatch + combine) * 1e-3, rel=1e-6)
    assert p.breakdown_ms["collective_latency"] == 0  # the measured kernel time includes it


def test_ascend_small_batch_dispatch_keeps_the_measured_latency_floor():
    # DeepEP-Ascend's fused-MoE doc: 80 / 75 us at 32 tokens per rank (EP size not stated, so at every size);
    # with 128 tokens the fastest of CloudMatrix Table 6 and DeepEP-Ascend at the rank count. A 910C is two
    # ranks (one per die): 8 chips are EP16 (CloudMatrix 131 / 132 us, DeepEP-Ascend 139 / 135), and 4 sequences
    # per chip are 2 tokens per rank. Linear in tokens between the two counts, so 2 tokens keep most of the
    # 32-token time.
    def line(y32, y128, tokens):
        slope = (y128 - y32) / (128 - 32)
        return y32 - slope * 32 + slope * tokens
    p = _step("deepseek-v3", "ascend-910c", chips=8, strategy="ep", batch=4, context=1024, redundant_experts=0,
              precision=Precision(weight="int8", kv="bf16"))
    expected = 58 * (line(80, 131, 2) + line(75, 132, 2)) * 1e-3
    assert p.breakdown_ms["communication"] == pytest.approx(expected, rel=1e-6)
    assert expected > 58 * (131 + 132) * 2 / 128 * 1e-3 * 5  # not the bandwidth share of the 128-token time


def test_a_two_die_chip_is_two_expert_parallel_ranks():
    # CloudMatrix Table 6 is timed per 910C die at 128 tokens per rank. 128 sequences per 910C with one MTP draft
    # are 256 tokens per chip, 128 per die: each die dispatches its own at the table's 128-token time, both at
    # once (EP 72 chips = 144 ranks, between Table 6's EP128 (152 / 150 us) and EP256 (152 / 149 us))
    assert get_chip("ascend-910c").devices == 2 and get_chip("ascend-910b").devices == 1
    p = _step("deepseek-v3", "ascend-910c", chips=72, strategy="ep", batch=128, context=1024, redundant_experts=32,
              mtp=1, mtp_acceptance=0.7, precision=Precision(weight="int8", kv="bf16"))
    combine = 150 + (149 - 150) * math.log(144 / 128) / math.log(256 / 128)
    assert p.breakdown_ms["communication"] == pytest.approx(58 * (152 + combine) * 1e-3, rel=1e-6)
    # and the busiest of its 144 ranks sets the expert time (TensorRT-LLM blog 4: 0.109 above the mean with EPLB)
    assert p.breakdown_ms["moe_imbalance"] > 0
    assert _step("deepseek-v3", "ascend-910c", chips=16, strategy="ep", batch=8, context=1024, redundant_experts=0,
                 precision=Precision(weight="int8", kv="bf16")).breakdown_ms["moe_imbalance"] > 0  # EP32 in dies


def test_ep_decode_without_a_benchmark_pays_bytes_over_the_links():
    p = _step("deepseek-v3", "mi300x", chips=8, strategy="ep", batch=8, context=1024, redundant_experts=0)
    per_token = 8 * 7168 * 3  # top-8, FP8 out and BF16 back
    # over MI300X's measured usable xGMI bandwidth (TransferBench in AMD's RCCL/xGMI blog: 315 GB/s per GPU)
    link = get_chip("mi300x").scale_up.usable_bandwidth.value
    assert link == pytest.approx(3.15e11)
    assert p.breakdown_ms["communication"] == pytest.approx(58 * 8 * per_token * 7 / 8 / link * 1e3, rel=1e-6)
    # leaving the blog out: the spec bandwidth at the default link efficiency
    out = _step("deepseek-v3", "mi300x", chips=8, strategy="ep", batch=8, context=1024, redundant_experts=0,
                exclude=frozenset({"rocm-blog-rccl-xgmi"}))
    spec = get_chip("mi300x").scale_up.bandwidth.value * defaults().scale_up
    assert out.breakdown_ms["communication"] == pytest.approx(58 * 8 * per_token * 7 / 8 / spec * 1e3, rel=1e-6)


def test_tp_all_reduce_pays_the_link_class_latency():
    # H200 has no system with its own figure: the Hopper NVLink class's 17 us (vLLM PR #24111, pynccl 0.5 MB)
    tp4 = _step("llama-3.1-70b", "h200", chips=4, batch=16).breakdown_ms
    assert tp4["collective_latency"] == pytest.approx(2 * 80 * 17e-6 * 1e3)
    assert _step("llama-3.1-8b", "h200").breakdown_ms["collective_latency"] == 0  # TP1: no collective
    # B200: the same benchmark's 13 us (vLLM PR #42324, pynccl 512 KiB, world size 2)
    b200 = _step("llama-3.1-70b", "b200", chips=8, batch=16).breakdown_ms
    assert b200["collective_latency"] == pytest.approx(2 * 80 * 13e-6 * 1e3)


def test_eager_step_pays_one_launch_per_op_call():
    # Llama-2-7B: 32 layers x (2 norms + 7 attention calls + 3 FFN calls) + embedding, final norm, LM head,
    # sampling = 388 kernels, each 5 us (HolisticTraceAnalysis) outside a graph
    assert model_cost(load_model("llama-2-7b"), PREC).op_calls() == 32 * 12 + 4
    eager = _step("llama-2-7b", graphs=False)
    graphed = _step("llama-2-7b")
    assert eager.breakdown_ms["launch"] == pytest.approx(388 * 5e-6 * 1e3)
    assert graphed.breakdown_ms["launch"] == 0
    # outside a graph the launches replace the in-graph kernel floor
    assert eager.tpot_ms - graphed.tpot_ms == pytest.approx(388 * 5e-6 * 1e3 - graphed.breakdown_ms["kernel_floor"])


def test_leaving_a_source_out_drops_its_tables():
    h800 = get_chip("h800")
    assert km.gemm_efficiency(h800, "fp8", 64, exclude=frozenset({"deepgemm", "deepgemm-pr-116"})) is None
    assert km.attention_efficiency(h800, "decode", exclude=frozenset({"flashmla"})) is None
    # an efficiency whose only measurement is excluded falls back to the spec sheet itself
    assert defaults(frozenset({"cloudmatrix-paper"})).gemm == 1.0
    day6 = next(p for p in validation.points()["point"] if p["source_id"] == "deepseek-day6")
    assert {"deepseek-day6", "deepep", "deepgemm", "flashmla"} <= validation.excluded_for(day6)


def test_serving_steady_state_by_hand():
    cost, d = _deploy("llama-3.1-8b", batch=1)
    r = serving.serve(cost, d, 1024, 256, concurrency=32)
    t_d = evaluate(cost, replace(d, batch=32, context=1024 + 128)).tpot_ms  # decode at the mean context
    t_p = evaluate(cost, replace(d, batch=32, phase="prefill", prompt_len=1024)).ttft_ms  # the cohort's prefills
    t_1 = evaluate(cost, replace(d, batch=1, phase="prefill", prompt_len=1024)).ttft_ms
    # the prefill samples each request's first token: 255 decode steps and 255 gaps between tokens follow it
    assert r.output_tokens_per_s == pytest.approx(32 * 256 / ((t_p + 255 * t_d) / 1e3))
    assert r.tpot_ms == pytest.approx(t_d + t_p / 255)
    assert r.ttft_ms == pytest.approx(t_1 + t_d)
    # a request rate is the concurrency Little's law gives back
    q = serving.serve(cost, d, 1024, 256, request_rate=r.requests_per_s)
    assert q.concurrency == pytest.approx(r.requests_per_s * (q.ttft_ms + 255 * q.tpot_ms) / 1e3, rel=1e-2)


def test_serving_counts_the_first_token_from_the_prefill():
    """A request of output_len tokens runs one prefill step (which samples token 1) and output_len - 1 decode
    steps (TensorRT-LLM's gptSession loop: step 0 the context phase, steps 1..maxNewTokens-1 generation): a
    4-token burst of 100 requests is 100 prefills plus 3 decode steps, by hand."""
    cost, d = _deploy("llama-3.1-8b", batch=1)
    r = serving.serve(cost, d, 128, 4, concurrency=100)
    t_d = evaluate(cost, replace(d, batch=100, context=128 + 2)).tpot_ms
    t_p = evaluate(cost, replace(d, batch=100, phase="prefill", prompt_len=128)).ttft_ms
    assert r.output_tokens_per_s == pytest.approx(400 / ((t_p + 3 * t_d) / 1e3), rel=1e-12)
    assert r.tpot_ms == pytest.approx(t_d + t_p / 3, rel=1e-12)
    # one output token: the prefill alone, no decode step
    one = serving.serve(cost, d, 128, 1, concurrency=100)
    assert one.output_tokens_per_s == pytest.approx(100 / (t_p / 1e3), rel=1e-12)


def test_tensor_parallel_memory_fit_counts_whole_sequences_per_instance():
    """Under TP every chip holds 1/tp of each sequence's cache, so an instance holds whole sequences, not whole
    sequences per chip. Qwen3-235B BF16 on TP8 H100 at 32,000 + 82 tokens, by hand: 94 layers x 4 K/V heads x
    128 x 2 (K and V) x 2 B = 192,512 B per token, split over 4 chips (4 heads on 8 chips: each head on two),
    1.544 GB per sequence per chip; what the weights leave holds floor(11.78) = 11 sequences, 11/8 per chip
    (whole sequences per chip would have stopped at 8)."""
    p = next(x for x in validation.points()["point"] if x["id"] == "gpustack-h100-qwen3-235b-bf16-tp8-32000")
    cost, d = validation.deployment(p)
    assert cost.kv_bytes_per_token == 94 * 4 * 128 * 2 * 2
    per_seq = 32082 * 94 * 4 * 128 * 2 * 2 / 4
    mem = evaluate(cost, replace(d, batch=1 / 8, context=32082)).memory_gb
    assert mem["kv_cache"] * 1e9 == pytest.approx(per_seq, rel=1e-12)
    n = int((mem["usable"] - mem["weights"]) * 1e9 // per_seq)
    assert n == 11 and serving.memory_fit(cost, d, 32000, 82) == 1
    s = serving.serve(cost, d, 32000, 82)
    assert s.concurrency == pytest.approx(11) and s.batch_per_chip == pytest.approx(11 / 8)
    # the engine's limit is per instance too: a limit of 10 holds 10 sequences (not 8), and 12 do not fit
    assert serving.serve(cost, d, 32000, 82, max_batch=10).concurrency == pytest.approx(10)
    with pytest.raises(ModelchipError, match="fit"):
        serving.serve(cost, d, 32000, 82, concurrency=12)


def test_a_finite_run_holds_no_more_requests_than_it_has():
    """trtllm-bench queues its whole dataset at once (3,000 requests at 1000/1000 on the perf-overview page): where
    more would fit, the load is the run's requests. By hand: 300 requests on one H100 where thousands fit are
    300 prefills plus 999 decode steps at batch 300."""
    cost, d = _deploy("llama-3.1-8b", batch=1)
    full = serving.serve(cost, d, 1000, 1000)
    assert full.batch_per_chip > 300
    r = serving.serve(cost, d, 1000, 1000, requests=300)
    t_d = evaluate(cost, replace(d, batch=300, context=1000 + 500)).tpot_ms
    t_p = evaluate(cost, replace(d, batch=300, phase="prefill", prompt_len=1000)).ttft_ms
    assert r.concurrency == 300
    assert r.output_tokens_per_s == pytest.approx(300 * 1000 / ((t_p + 999 * t_d) / 1e3), rel=1e-12)
    # more requests than fit: memory still bounds the load
    assert serving.serve(cost, d, 1000, 1000, requests=10 ** 6).concurrency == full.concurrency


def test_serving_ttft_is_one_prompt_on_the_instance():
    """TTFT is one prompt's prefill plus the decode step it waits behind: under TP2 one prompt is half a sequence
    per chip (batch 1 per chip would be two prompts, one per chip's share)."""
    cost, d = _deploy("llama-3.1-70b", chips=2, batch=1)
    r = serving.serve(cost, d, 2048, 128, concurrency=16)
    t_1 = evaluate(cost, replace(d, batch=0.5, phase="prefill", prompt_len=2048)).ttft_ms
    t_2 = evaluate(cost, replace(d, batch=1, phase="prefill", prompt_len=2048)).ttft_ms
    t_d = evaluate(cost, replace(d, batch=8, context=2048 + 64)).tpot_ms
    assert r.ttft_ms == pytest.approx(t_1 + t_d, rel=1e-12)
    assert t_1 < t_2


def test_serving_errors_are_clear():
    cost, d = _deploy("llama-3.1-405b", batch=1)
    with pytest.raises(ModelchipError, match="weights alone"):
        serving.serve(cost, d, 128, 128)
    cost, d = _deploy("llama-3.1-8b", batch=1)
    with pytest.raises(ModelchipError, match="fit"):
        serving.serve(cost, d, 128, 128, concurrency=10 ** 6)
    with pytest.raises(ModelchipError, match="not both"):
        serving.serve(cost, d, 128, 128, concurrency=4, request_rate=1)
    with pytest.raises(ModelchipError, match="capacity"):
        serving.serve(cost, d, 128, 128, request_rate=1e9)


def test_predict_serve_cli(capsys):
    args = ["predict", "--model", "llama-3.1-8b", "--chip", "h100", "--num-chips", "1", "--strategy", "tp", "--phase",
            "serve", "--input-len", "1024", "--output-len", "256", "--concurrency", "8", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["phase"] == "serve" and out["concurrency"] == 8 and out["ttft_ms"] > 0 and out["tpot_ms"] > 0
    assert main(args[:-1] + ["--batch", "4"]) == 2
    assert "not --batch" in capsys.readouterr().err


def test_one_sequence_on_tp8():
    # a fractional batch spreads one sequence over the TP group
    p = _step("llama-3.1-70b", "h100", chips=8, batch=1 / 8, context=2048)
    assert p.feasible and p.tokens_per_s_per_chip * 8 == pytest.approx(1e3 / p.tpot_ms)


def test_kernel_floor_reproduces_the_published_batch1_bandwidth_share():
    # Hazy Research: vLLM and SGLang use at most 50% of an H100's bandwidth on Llama-3.2-1B batch-1 decode
    llama1b = ["hidden_size=2048", "num_hidden_layers=16", "num_attention_heads=32", "num_key_value_heads=8",
               "intermediate_size=8192", "tie_word_embeddings=true", "head_dim=64"]
    bf16 = Precision(weight="bf16", kv="bf16")
    cost = model_cost(load_model("llama-3.1-8b", llama1b), bf16)
    c = get_chip("h100")
    p = evaluate(cost, Deployment(chip=c, chips=1, strategy="tp", batch=1, context=160, precision=bf16,
                                  system=system_for(c)))
    weights = (cost.attn_params + cost.dense_params + cost.embed_params) * 2
    assert weights == pytest.approx(2.47e9, rel=0.01)
    share = weights / 3.35e12 / (p.tpot_ms / 1e3)
    assert 0.40 < share <= 0.50
    assert p.breakdown_ms["kernel_floor"] == pytest.approx(cost.op_calls() * 3.77e-3)
    assert _step("llama-2-7b", graphs=False).breakdown_ms["kernel_floor"] == 0  # eager pays launches instead


def test_busiest_expert_rank_sets_the_moe_time():
    kw = dict(strategy="ep", batch=64, context=4096, redundant_experts=32)
    eplb = _step("deepseek-v3", "h800", chips=96, **kw).breakdown_ms
    ideal = _step("deepseek-v3", "h800", chips=96, moe_balance="ideal", **kw).breakdown_ms
    static = _step("deepseek-v3", "h800", chips=96, moe_balance="static", **kw).breakdown_ms
    assert ideal["moe_imbalance"] == 0
    # TensorRT-LLM tech blog 4, Table 1 (EP32): hottest rank 0.109 above the mean with EPLB, 1.564 without
    routed = eplb["moe_imbalance"] / 0.109
    assert static["moe_imbalance"] == pytest.approx(routed * 1.564)
    assert routed < eplb["moe"]  # the shared expert is not imbalanced
    # measured at 32 ranks: smaller groups are not charged
    assert _step("deepseek-v3", "h800", chips=16, strategy="ep", batch=64, context=4096,
                 moe_balance="static").breakdown_ms["moe_imbalance"] == 0
    with pytest.raises(ModelchipError, match="MoE balance"):
        _step("deepseek-v3", "h800", chips=16, strategy="ep", moe_balance="even")


def test_aggregated_serving_waits_for_the_busiest_attention_rank():
    cost, d = _deploy("qwen3-235b-a22b", "h200", chips=8, strategy="ep", batch=1)
    s = serving.serve(cost, d, 1000, 1000, concurrency=8 * 64)
    b = s.decode.breakdown_ms
    attn = sum(b[k] for k in ("attention_proj", "attention_core", "lm_head", "norms", "sampling"))
    # TensorRT-LLM tech blog 10: mean/max tokens per attention-DP rank 54.11% in aggregated serving
    assert b["dp_attention_wait"] == pytest.approx(attn * (1 / 0.5411 - 1))
    # a decode-only (disaggregated) step is not charged
    assert evaluate(cost, replace(d, batch=64, context=1500)).breakdown_ms["dp_attention_wait"] == 0


def test_attention_layer_measurements_are_reproduced():
    # Step-3 paper, Table 9: one MFA layer of Step-3 at 8K context, 4 H800s holding 256 sequences with
    # data-parallel attention, takes 281 us; MLA (DeepSeek-V3) on H20 takes 1,252 us
    for model, chip, us in (("step3", "h800", 281), ("deepseek-v3", "h20", 1252)):
        prec = Precision(weight="fp8", kv="bf16")
        cost = model_cost(load_model(model), prec)
        c = get_chip(chip)
        p = evaluate(cost, Deployment(chip=c, chips=4, strategy="ep", batch=64, context=8192, precision=prec,
                                      moe_balance="ideal"))
        layer = (p.breakdown_ms["attention_proj"] + p.breakdown_ms["attention_core"]) / cost.layers
        floor = p.breakdown_ms["kernel_floor"] / cost.op_calls() * OPS_PER_ATTENTION[cost.attention_kind]
        assert (layer + floor) * 1e3 == pytest.approx(us, rel=1e-6)
    # only the measured chips: an H100 running MLA keeps FlashMLA's H800 figures
    assert layer_efficiency("h100", "mla", 8192) is None


def test_fp8_attention_on_hopper_runs_at_the_measured_fp8_over_bf16_speedup():
    # MLA decode on an H20 at 64 sequences of 8K context is compute-bound in either cache format: per sequence and
    # layer 2 x 128 heads x 8192 x (576 + 512) = 2.28 GFLOP over 8192 x 576 x 2 = 9.4 MB (BF16), 242 FLOP/byte,
    # beyond the H20's 148 TFLOPS / 4.0 TB/s = 37. The core's efficiency is the BF16 Step-3 layer's (0.90), so
    # BF16 attention takes FLOPs / (148 TFLOPS x 0.90); FlashAttention-3 (arXiv 2407.08608) measured FP8 at
    # 1.2 PFLOPS against 740 TFLOPS BF16 on H100, so FP8 takes that time / 1.62, not / 2 (296 / 148)
    times = {}
    for kv in ("bf16", "fp8"):
        prec = Precision(weight="fp8", kv=kv)
        cost = model_cost(load_model("deepseek-v3"), prec)
        d = Deployment(chip=get_chip("h20"), chips=4, strategy="ep", batch=64, context=8192, precision=prec,
                       moe_balance="ideal")
        times[kv] = evaluate(cost, d).breakdown_ms["attention_core"]
    flops = 2 * 128 * 8192 * (576 + 512) * 64 * 61
    assert times["bf16"] == pytest.approx(flops / (148e12 * layer_efficiency("h20", "mla", 8192)) * 1e3, rel=1e-6)
    assert times["fp8"] == pytest.approx(times["bf16"] / (1.2e15 / 7.4e14), rel=2e-3)
    # left out (the FlashAttention-3 source), or on an architecture without the measurement, FP8 gets its peak
    prec = Precision(weight="fp8", kv="fp8")
    cost = model_cost(load_model("deepseek-v3"), prec)
    d = Deployment(chip=get_chip("h20"), chips=4, strategy="ep", batch=64, context=8192, precision=prec,
                   moe_balance="ideal", exclude=frozenset({"flash-attention-3"}),
                   efficiency=defaults(frozenset({"flash-attention-3"})))
    assert evaluate(cost, d).breakdown_ms["attention_core"] == pytest.approx(times["bf16"] / 2, rel=1e-6)
    assert km.fixed("fp8_attention_speedup", ("cdna3",)) is None


def _core_ms(model: str, chip: str, kv: str, exclude: frozenset = frozenset(), **kw) -> float:
    prec = Precision(weight="fp8", kv=kv)
    cost, d = _deploy(model, chip, precision=prec, exclude=exclude, efficiency=defaults(exclude), **kw)
    return evaluate(cost, d).breakdown_ms["attention_core"]


def test_fp8_attention_on_blackwell_runs_at_fa4s_measured_fp8_over_bf16_speedup():
    # FlashAttention PR #2109 (FA4 forward on SM100, head dim 64, exp2 emulation off in both): 903.13 TFLOPS FP8
    # against 888.56 BF16 at 2 x 8192 tokens, so a compute-bound attention core with an 8-bit cache is only that
    # much faster than with a BF16 one, not the 4500 / 2250 TFLOPS of the B200's peaks
    fa4 = 903.13 / 888.56
    prefill = dict(batch=1, phase="prefill", prompt_len=8192, context=8192)
    bf16, fp8 = (_core_ms("llama-3.1-70b", "b200", kv, **prefill) for kv in ("bf16", "fp8"))
    assert bf16 / fp8 == pytest.approx(fa4, rel=1e-3)
    # without the publication, FP8 attention runs at the FP8 peak
    out = frozenset({"fa-pr-2109"})
    assert _core_ms("llama-3.1-70b", "b200", "bf16", out, **prefill) / _core_ms(
        "llama-3.1-70b", "b200", "fp8", out, **prefill) == pytest.approx(4.5e15 / 2.25e15, rel=1e-6)
    # GQA decode reads 2 x 8 heads x 128 x 1 byte per token and layer for 2 x 2 x 64 x 128 FLOPs (16 FLOP/byte,
    # against a ridge of 4500 / 8 = 562 for FP8): bandwidth-bound, so the ratio does not touch it
    decode = dict(batch=64, context=8192)
    assert _core_ms("llama-3.1-70b", "b200", "fp8", **decode) == pytest.approx(
        _core_ms("llama-3.1-70b", "b200", "fp8", out, **decode), rel=1e-9)


def test_tensorrt_llm_gives_the_kv_cache_a_fraction_of_the_memory_the_weights_leave():
    vllm = _step("llama-2-7b", "a100", batch=8, context=2176, precision=Precision(weight="bf16", kv="bf16"))
    trt = _step("llama-2-7b", "a100", batch=8, context=2176, precision=Precision(weight="bf16", kv="bf16"),
                engine="tensorrt-llm")
    weights = vllm.memory_gb["weights"]
    a100 = 81920 * 2**20 / 1e9  # nvidia-smi's 81920 MiB on an A100-SXM4-80GB, in GB
    assert vllm.memory_gb["usable"] == pytest.approx(a100 * 0.9)  # vLLM: 90% of the device
    # TensorRT-LLM (KvCacheConfig.free_gpu_memory_fraction = 0.9): 90% of what the weights leave
    assert trt.memory_gb["usable"] == pytest.approx(weights + (a100 - weights) * 0.9)
    assert max_fit("llama-2-7b", engine="tensorrt-llm") > max_fit("llama-2-7b")
    override = _step("llama-2-7b", "a100", batch=8, context=2176, precision=Precision(weight="bf16", kv="bf16"),
                     engine="tensorrt-llm", kv_free_fraction=0.5)
    assert override.memory_gb["usable"] == pytest.approx(weights + (a100 - weights) * 0.5)


def max_fit(model: str, **kw) -> int:
    from modelchip.cost.deploy import max_batch_by_memory

    return max_batch_by_memory(*_deploy(model, "a100", context=2176, precision=Precision(weight="bf16", kv="bf16"),
                                        **kw))


def test_chips_lists_the_measurements_it_applies(capsys):
    assert main(["chips", "h20", "--json"]) == 0
    kernels = json.loads(capsys.readouterr().out)["measured_kernels"]
    ids = {k["id"] for k in kernels}
    assert {"deepgemm-fp8-dense-h800", "flashmla-h800", "step3-table9-dp"} <= ids
    assert all(k["source"] and k["tag"] for k in kernels)
    assert main(["chips", "mtt-s4000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["measured_kernels"] == []


def test_weights_offloaded_to_host_memory_stream_behind_the_step():
    # DeepSeek-V3 FP8 on 4 GB200 (SGLang's prefill instance): more weights than HBM, the rest in Grace memory
    kw = dict(chips=4, strategy="ep", batch=8, phase="prefill", prompt_len=2000, context=1, redundant_experts=0,
              precision=Precision(weight="fp8", kv="bf16"))
    assert not _step("deepseek-v3", "gb200", **kw).feasible
    p = _step("deepseek-v3", "gb200", weight_offload=True, **kw)
    gb200 = get_chip("gb200")
    offloaded = p.memory_gb["offloaded_weights"] * 1e9
    assert offloaded + p.memory_gb_per_chip * 1e9 == pytest.approx(
        evaluate(*_deploy("deepseek-v3", "gb200", **kw)).memory_gb_per_chip * 1e9)
    # a 16K-token forward takes far longer than streaming the excess at 900 GB/s / 2 directions / 2 GPUs
    stream_s = offloaded / (900e9 / 2 / 2)
    assert gb200.host_link.effective == 900e9 / 4
    assert stream_s * 1e3 < p.ttft_ms
    assert p.breakdown_ms["weight_offload"] == 0
    # decode of one sequence on 2 GPUs (half the model each, most of it in Grace memory) reads far less than it
    # streams: the step waits for the link
    d = _step("deepseek-v3", "gb200", weight_offload=True,
              **{**kw, "chips": 2, "phase": "decode", "batch": 1, "context": 2000})
    assert d.feasible and d.memory_gb["offloaded_weights"] > 100
    rest = sum(v for k, v in d.breakdown_ms.items() if k != "weight_offload")
    assert d.breakdown_ms["weight_offload"] == pytest.approx(d.memory_gb["offloaded_weights"] * 1e9 / (900e9 / 4)
                                                            * 1e3 - rest, rel=1e-6)


def test_weight_offload_needs_a_host_link():
    p = _step("deepseek-v3", "h100", chips=4, strategy="ep", batch=8, phase="prefill", prompt_len=2000, context=1,
              redundant_experts=0, weight_offload=True)
    assert not p.feasible and "no host link" in p.reason


def test_redundant_expert_replicas_each_stream_their_weights():
    # DeepSeek-V3 on 144 H800 (EP144), 256 experts + 32 redundant replicas = 2 expert copies per GPU, 4 sequences
    # per GPU: 576 tokens x top-8 spread evenly over the 288 copies reach every copy (1 - (1 - 8/288)^576 of them,
    # 1 - 1e-7), so each GPU streams 2 experts' weights, not 256/144 = 1.78, at 32 / 2 = 16 rows per expert
    kw = dict(chips=144, strategy="ep", batch=4, context=4096, moe_balance="ideal")
    p = _step("deepseek-v3", "h800", redundant_experts=32, **kw).breakdown_ms
    chip, params, peak = get_chip("h800"), 44040192, H800_FP8  # 3 x 7168 x 2048 per expert, FP8: 1 byte each
    hit = 288 * (1 - (1 - 8 / 288) ** 576) / 144
    pairs = 576 * 8 / 144

    def gemm(flops, nbytes, m):  # a matmul at the grouped/dense FP8 benchmarks' roofline efficiency at M
        return max(flops / peak, nbytes / H800_BW) / km.gemm_efficiency(chip, "fp8", m, True, weight="fp8")

    routed = gemm(2 * pairs * params, hit * params, pairs / hit)
    shared = max(2 * 4 * params / peak, params / H800_BW) / km.gemm_efficiency(chip, "fp8", 4, False, weight="fp8")
    assert hit == pytest.approx(2.0, rel=1e-6)
    assert p["moe"] == pytest.approx(58 * (routed + shared) * 1e3, rel=1e-9)
    # without replicas the same GPUs hold 256 / 144 experts' worth each (the check needs EP to divide them: EP128)
    kw["chips"] = 128
    q = _step("deepseek-v3", "h800", redundant_experts=0, **kw).breakdown_ms
    hit0 = 256 * (1 - (1 - 8 / 256) ** 512) / 128
    routed0 = gemm(2 * 32 * params, hit0 * params, 32 / hit0)
    assert q["moe"] == pytest.approx(58 * (routed0 + shared) * 1e3, rel=1e-9)


def test_mtp_draft_passes_after_the_first_run_on_one_token_per_sequence():
    # DeepSeek-V3 on 16 910Cs (no graph-kernel, host or launch figure on davinci: a step is its layers plus draft
    # passes). With 3 drafts the module runs once over the 4 tokens per sequence the step verified, then twice
    # on the last draft alone: (S4 + 2 S1) / 61, S_q the layers' time at q tokens per sequence
    kw = dict(chips=16, strategy="ep", batch=8, context=2048, redundant_experts=0,
              precision=Precision(weight="int8", kv="bf16"))
    one = _step("deepseek-v3", "ascend-910c", **kw)
    s1 = one.tpot_ms  # one token per step without drafts
    assert one.breakdown_ms["mtp_draft"] == 0
    three = _step("deepseek-v3", "ascend-910c", mtp=3, mtp_acceptance=0.8, **kw)
    step = three.tpot_ms * (1 + 0.8 + 0.8 ** 2 + 0.8 ** 3)
    draft = three.breakdown_ms["mtp_draft"]
    assert draft * 61 == pytest.approx(step - draft + 2 * s1, rel=1e-9)
    # one draft: a single pass over the 2 tokens per sequence, 1/61 of the layers' time
    two = _step("deepseek-v3", "ascend-910c", mtp=1, mtp_acceptance=0.8, **kw)
    assert two.breakdown_ms["mtp_draft"] * 61 == pytest.approx(two.tpot_ms * 1.8 - two.breakdown_ms["mtp_draft"],
                                                               rel=1e-9)


def test_mtp_draft_passes_pay_the_per_op_floor():
    # each draft pass replays one layer's calls (the layers' average), the embedding, final norm, LM head and
    # sampling, and the MTP module's two RMSNorms and its projection (DeepSeek-V3 report, section 2.2), each at
    # Hopper's graph-replayed per-op floor (3.77 us, Hazy Research's batch-1 Llama measurement)
    kw = dict(chips=16, strategy="ep", batch=8, context=2048, redundant_experts=0)
    cost, _ = _deploy("deepseek-v3", "h800", **kw)
    base = _step("deepseek-v3", "h800", **kw).breakdown_ms["kernel_floor"]
    assert base == pytest.approx(cost.op_calls() * 3.77e-3, rel=1e-12)
    mtp = _step("deepseek-v3", "h800", mtp=2, mtp_acceptance=0.8, **kw).breakdown_ms["kernel_floor"]
    per_pass = cost.layer_op_calls / 61 + 4 + 3
    assert mtp == pytest.approx((cost.op_calls() + 2 * per_pass) * 3.77e-3, rel=1e-12)


def test_log_interp_is_linear_in_log_x_between_points_and_flat_beyond_them():
    # the interpolation every kernel table is read with (rewritten to walk the points without copying them)
    curve = [(1.0, 0.2), (4.0, 0.6), (16.0, 1.0)]
    assert km.log_interp(curve, 0.5) == 0.2 and km.log_interp(curve, 1.0) == 0.2  # at or below the first point
    assert km.log_interp(curve, 64.0) == 1.0  # beyond the last
    assert km.log_interp(curve, 4.0) == pytest.approx(0.6)  # at a point: the segment ending there
    assert km.log_interp(curve, 2.0) == pytest.approx(0.2 + 0.4 * 0.5)  # log 2 / log 4 of the way from 1 to 4
    assert km.log_interp(curve, 8.0) == pytest.approx(0.6 + 0.4 * 0.5)
    assert km.log_interp([(32.0, 0.7)], 1.0) == km.log_interp([(32.0, 0.7)], 1e6) == 0.7  # one point: flat
