"""A dense matmul call on an architecture with a weight-size sweep (spec/catalog/kernels.toml `weight_sweep`)
streams its weights at the rate the sweep measured for a call of its size, and computes at the FLOP-bound rows'
efficiency at its M; each checked against hand arithmetic on the published tables (pytorch/helion PR #3079:
vLLM's CUTLASS NVFP4 GEMM at M = 1 on nine shapes on GB200; vLLM PR #20646 and FlashInfer PR #1979 for the
FLOP-bound rows)."""

import math
import statistics

import pytest

from modelchip.cost import kernel_model as km
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.cost.systems import system_for
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip

FP4 = Precision(weight="fp4", kv="fp8", lm_head_weight="fp4")  # head too: one format, one sweep
BW, FP4_PEAK = 8.0e12, 9.0e15  # NVIDIA B200 and GB200: 8 TB/s; B200 FP4 9 PFLOPS (the FLOP-bound rows' chip)
# helion PR #3079, 'cutlass (us)' of the bf16in rows, as GB/s over the weights (kernels.toml): N x K -> GB/s
SWEEP = {(4096, 4096): 861, (6144, 4096): 1204, (28672, 4096): 2533, (4096, 14336): 1460, (5120, 5120): 1180,
         (15360, 5120): 2409, (8192, 8192): 1834, (10240, 8192): 2060, (8192, 28672): 2382}


def _eff(n: int, k: int) -> float:
    return SWEEP[(n, k)] * 1e9 / BW


def test_a_call_streams_at_the_rate_swept_for_its_size():
    curve = km.gemm_split(get_chip("b200"), "fp4", 16)[1]
    at = lambda w: km.stream_efficiency(curve, w)  # noqa: E731
    assert at(8192 * 8192) == pytest.approx(_eff(8192, 8192))
    # between two swept sizes: linear in log size (8192 x 8192 and 15360 x 5120)
    lo, hi = 8192 * 8192, 15360 * 5120
    assert at(math.sqrt(lo * hi)) == pytest.approx((_eff(8192, 8192) + _eff(15360, 5120)) / 2)
    # below the smallest and above the largest swept size, the nearest one's rate
    assert at(1024 * 1024) == pytest.approx(_eff(4096, 4096))
    assert at(2 * 8192 * 28672) == pytest.approx(_eff(8192, 28672))


def test_the_compute_side_is_the_flop_bound_rows_median():
    b200 = get_chip("b200")
    # at M = 1024 two rows are FLOP-bound: vLLM's 6144 x 4096 (2221.4 TFLOPS) and FlashInfer's 7168 x 4608 (3370.4)
    assert km.gemm_split(b200, "fp4", 1024)[0] == pytest.approx(statistics.median([2221.4e12, 3370.4e12]) / FP4_PEAK)
    # below the first FLOP-bound M (512: vLLM's 1569.1 TFLOPS) its value holds
    assert km.gemm_split(b200, "fp4", 16)[0] == pytest.approx(1569.1e12 / FP4_PEAK)


def test_the_sweep_applies_only_where_measured():
    # no sweep for Hopper FP8, nor for Blackwell once the sweep's source is left out: the median curve applies
    assert km.gemm_split(get_chip("h100"), "fp8", 16) is None
    assert km.gemm_split(get_chip("b200"), "fp4", 16, exclude=frozenset({"helion-pr-3079"})) is None
    # the sweep's rows stay out of the median per M: at M = 64 only vLLM's 6144 x 4096 row (1104 GB/s) is there
    assert km.gemm_efficiency(get_chip("b200"), "fp4", 64) == pytest.approx(1104e9 / BW)


def test_llama70b_decode_calls_stream_at_their_sizes():
    # Llama 3.1 70B, NVFP4 weights (0.5 B per weight in the model's accounting), one B200, 16 sequences: every
    # call is bandwidth-bound (at M = 16 the FLOPs take under a tenth of the streaming time)
    c = get_chip("b200")
    cost = model_cost(load_model("llama-3.1-70b"), FP4)
    d = Deployment(chip=c, chips=1, strategy="tp", batch=16, context=1024, precision=FP4, system=system_for(c))
    p = evaluate(cost, d)
    qkv, o = 8192 * 10240, 8192 * 8192  # stacked QKV and O per layer: swept sizes 10240 x 8192 and 8192 x 8192
    proj = 80 * 0.5 * (qkv / (BW * _eff(10240, 8192)) + o / (BW * _eff(8192, 8192)))
    assert p.breakdown_ms["attention_proj"] == pytest.approx(proj * 1e3, rel=1e-9)
    # gate_up (2 x 8192 x 28672) and down (8192 x 28672): at or above the largest swept size, its rate
    ffn = 80 * 0.5 * 3 * 8192 * 28672 / (BW * _eff(8192, 28672))
    assert p.breakdown_ms["dense_ffn"] == pytest.approx(ffn * 1e3, rel=1e-9)
    head = 128256 * 8192 * 0.5 / (BW * _eff(8192, 28672))
    assert p.breakdown_ms["lm_head"] == pytest.approx(head * 1e3, rel=1e-9)
    # the regime the closed forms above hold in, in modelled seconds (no clock is read): the largest call's FLOPs
    # at the compute side's efficiency take under a tenth of its modelled streaming time
    modelled_flops_s = 2 * 16 * 2 * 8192 * 28672 / 1569.1e12
    modelled_stream_s = ffn / 80
    assert modelled_flops_s < 0.1 * modelled_stream_s


def test_prefill_calls_are_flop_bound_at_the_measured_compute_efficiency():
    c = get_chip("b200")
    cost = model_cost(load_model("llama-3.1-70b"), FP4)
    d = Deployment(chip=c, chips=1, strategy="tp", batch=1, context=1, phase="prefill", prompt_len=1024,
                   precision=FP4, system=system_for(c))
    p = evaluate(cost, d)
    e_c = km.gemm_split(c, "fp4", 1024)[0]
    assert p.breakdown_ms["dense_ffn"] == pytest.approx(2 * 1024 * cost.dense_params / (FP4_PEAK * e_c) * 1e3,
                                                        rel=1e-9)


def test_a_flop_bound_benchmark_votes_above_its_largest_m():
    b200 = get_chip("b200")
    at = lambda m: km.gemm_split(b200, "fp4", m)[0] * FP4_PEAK / 1e12  # noqa: E731  TFLOPS
    # M = 2,048: vLLM's own row (2613.1) and FlashInfer's M = 1,024 row held above it (3370.4); TorchAO's
    # squares start at 4,096 and do not vote below
    assert at(2048) == pytest.approx(statistics.median([2613.1, 3370.4]))
    # M = 8,192: vLLM 3025.5, FlashInfer 3370.4 (held), TorchAO's 8192^3 row 5370
    assert at(8192) == pytest.approx(statistics.median([3025.5, 3370.4, 5370.0]))
    # M = 16,384: only vLLM measures there (3038.8); FlashInfer's 3370.4 and TorchAO's 5370 (its largest M) hold,
    # where before only vLLM's row voted and the curve fell from 4,197 TFLOPS at 8,192 to 3,039
    assert at(16384) == pytest.approx(statistics.median([3038.8, 3370.4, 5370.0]))
    # beyond every measured M the last median holds
    assert at(500000) == pytest.approx(at(16384))


def test_an_engine_that_writes_activations_quantized_reads_the_gemm_alone():
    # vLLM PR #20646 published both columns of one run: NVFP4 with the activations' quantization in the call
    # (what vLLM pays) and without it (TensorRT-LLM's RMSNorm writes NVFP4 itself); benchmarks that do not split
    # the two (FlashInfer, TorchAO) stand for every engine
    b200 = get_chip("b200")
    ids = lambda engine: {t.id for t in km.gemm_tables(b200, "fp4", False, engine=engine)}  # noqa: E731
    with_quant, alone = "cutlass-nvfp4-b200-vllm-20646", "cutlass-nvfp4-b200-vllm-20646-noquant"
    assert with_quant in ids("vllm") and alone not in ids("vllm") and ids("") == ids("vllm")
    assert alone in ids("tensorrt-llm") and with_quant not in ids("tensorrt-llm")
    assert ids("vllm") - {with_quant} == ids("tensorrt-llm") - {alone}
    at = lambda m, engine: km.gemm_split(b200, "fp4", m, engine=engine)[0] * FP4_PEAK / 1e12  # noqa: E731
    # M = 2,048 by hand: the GEMM alone ran 3,411.5 TFLOPS (2,613.1 with the quantization), FlashInfer's M = 1,024
    # row (3,370.4) held above it
    assert at(2048, "tensorrt-llm") == pytest.approx(statistics.median([3411.5, 3370.4]))
    assert at(2048, "vllm") == pytest.approx(statistics.median([2613.1, 3370.4]))
    # at M = 64 the one row there is bandwidth-bound: 1,321 GB/s for the GEMM alone, 1,104 with the quantization
    assert km.gemm_efficiency(b200, "fp4", 64, engine="tensorrt-llm") == pytest.approx(1321e9 / BW)


def test_a_benchmark_says_included_or_excluded_or_nothing():
    from modelchip.errors import ModelchipError
    from modelchip.spec.kernels import parse

    row = {"id": "x", "arch": ["blackwell"], "dtype": "fp4", "measured_on": "b200", "source": "s", "tag": "P",
           "source_id": "s", "rows": [[1, 2, 3, 4, 5]]}
    assert parse({"gemm": [row]}).gemm[0].activation_quant == ""
    with pytest.raises(ModelchipError, match="activation_quant must be 'included' or 'excluded', not 'fused'"):
        parse({"gemm": [{**row, "activation_quant": "fused"}]})


def test_leaving_a_benchmark_out_removes_its_held_votes():
    b200 = get_chip("b200")
    out = frozenset({"flashinfer-pr-1979"})
    assert km.gemm_split(b200, "fp4", 16384, exclude=out)[0] * FP4_PEAK / 1e12 == pytest.approx(
        statistics.median([3038.8, 5370.0]))


def _log_between(lo: tuple[int, int], hi: tuple[int, int], w: float) -> float:
    """The sweep's rate at `w` weight elements, linear in log size between two swept shapes."""
    (wl, el), (wh, eh) = (lo[0] * lo[1], _eff(*lo)), (hi[0] * hi[1], _eff(*hi))
    return el + (eh - el) * math.log(w / wl) / math.log(wh / wl)


def test_grouped_experts_stream_at_the_sweep_rate_of_all_experts_hit():
    # Qwen3-235B-A22B in NVFP4 (0.5 B per weight in the model's accounting) on 8 B200, experts over all 8 (EP8,
    # 16 of 128 per GPU), attention data-parallel, 64 sequences per GPU: 512 tokens x top-8 hit all 128 experts
    # (128 (1 - (120/128)^512) = 128 - 6e-13), 16 per GPU, 512 pairs per GPU, 32 rows per expert. Blackwell has
    # no grouped FP4 benchmark, so each layer's two grouped launches (gate_up, down) stream the weights of the
    # 16 experts they run at the sweep's rate for that sum, not at the dense per-M curve's rate at 32 rows
    # (measured on one 6144 x 4096 projection: ~1.1 TB/s)
    c = get_chip("b200")
    cost = model_cost(load_model("qwen3-235b-a22b"), FP4)
    moe = cost.moe
    assert (moe.layers, moe.experts, moe.top_k, moe.expert_params, moe.shared_params) == (
        94, 128, 8, 3 * 4096 * 1536, 0)
    d = Deployment(chip=c, chips=8, strategy="ep", batch=64, context=1024, precision=FP4, system=system_for(c))
    p = evaluate(cost, d)
    gate_up, down = 16 * 2 * 4096 * 1536, 16 * 4096 * 1536  # 201.3M and 100.7M weight elements a launch
    # swept neighbours: 28672 x 4096 (117.4M) and 8192 x 28672 (234.9M); 10240 x 8192 (83.9M) and 28672 x 4096
    e_gu = _log_between((28672, 4096), (8192, 28672), gate_up)
    e_dn = _log_between((10240, 8192), (28672, 4096), down)
    stream = 94 * 0.5 * (gate_up / (BW * e_gu) + down / (BW * e_dn))
    assert p.breakdown_ms["moe"] == pytest.approx(stream * 1e3, rel=1e-9)
    # 32 rows per expert stay bandwidth-bound: gate_up's FLOPs (2 x 512 pairs x its weights per expert) at the
    # compute side's efficiency (vLLM's M = 512 row, 1569.1 TFLOPS, held below) take under a quarter of its bytes'
    assert 2 * 512 * gate_up / 16 / 1569.1e12 < 0.25 * 0.5 * gate_up / (BW * e_gu)
    # the dense curve at 32 rows (between vLLM's M = 16 and 64 rows, 1071 and 1104 GB/s) would take over twice as long
    assert stream * 2 < 94 * 0.5 * (gate_up + down) / 1104e9
