"""The planner against published measured deployments: the error may not silently get worse, and every
point and measured figure names where it comes from."""

import re

from modelchip.cost import validation
from modelchip.cost.efficiency import sources as efficiency_sources
from modelchip.spec.kernels import kernel_catalog

CITED = re.compile(r"https?://|arXiv \d{4}\.\d{4,5}")


def test_validation_error_bounds():
    res = validation.run()
    ins, loso = res["in_sample"], res["leave_one_source_out"]
    # coverage the issue asks for: points, independent sources, chips (of which non-NVIDIA)
    assert res["count"] >= 123 and res["sources"] >= 17 and res["chips"] >= 11
    assert {"ascend-910b", "ascend-910c", "mi300x", "mi325x"} <= {r["chip"] for r in res["rows"]}
    # today's errors (docs/validation.md); lower these as mechanisms land, never raise them. The 30 points
    # added with issue 14 (GPUStack's lab, ROCm's vLLM tables) were predicted before anything was changed for
    # them and widened the medians from 14.8% to 20.6% (in-sample) and 21.8% (LOSO); the per-call kernel floors
    # measured on MI300X, vLLM-Ascend's host dispatch and torch_npu's flash-attention utilization took them to
    # 16.4% and 17.1%. The 20 MLPerf Inference v4.1/v5.1 points (held out, predicted before any change) took them
    # to 21.6% and 21.8%, 81 and 80 of 121 within 30%. Then three measured kernel tables took them to 17.7% and
    # 18.1%, 90 and 89 within 30%: the Triton fused-MoE layer in BF16 on Hopper (vLLM PR #44818) for
    # tensor-parallel-split experts, the Blackwell NVFP4 weight-size sweep (helion PR #3079), and MI300X's
    # per-channel FP8 GEMMs at AITER's rowwise efficiency with its TP8 all-reduce at RCCL's measured time. Costing
    # each AFD micro-batch as a step of its own (its side's weights read again) took them to 16.0% and 17.0%, 93
    # and 92 within 30%. Holding each FLOP-bound benchmark's largest-M efficiency above it in the median (the
    # compute side of Blackwell's dense NVFP4 calls) took them to 15.1% and 15.1%, 95 and 94 within 30%. Raised
    # once, for a correction of the points' setup rather than of the model: ROCm's dev-docker latency runs serve
    # their prompts from vLLM V1's prefix cache (the warm-up's prompts, reused), which made its 2K-prompt points
    # miss like their 128-token twins; with MI300X's small-kernel floor charged per group: 16.0% and 17.0%, 94
    # and 93 within 30%. Sizing gptSessionBenchmark's KV cache to its static batch, as GptSession allocates it (the
    # A100 batch-60 run fits; the executor's 90%-of-free-memory pool does not apply): 15.7% and 15.7%, 95 and 94
    # within 30%. Raised a second time, for a counting correction: each request's first token comes from its prefill
    # step (output_len - 1 decode steps, as the engines run them), which makes every serving point 0.05-5% faster:
    # 15.7% and 15.7% (0.1 point worse), 95 and 94 within 30%. Raised a third time, for a memory-fit correction:
    # a tensor-parallel instance holds whole sequences, not whole sequences per chip (GPUStack's TP8 and TP4
    # 32K-prompt runs: 11 in flight, not 8), which makes five Qwen3-235B points 1-5% faster and moves the median
    # across a gap in the sorted errors: 16.0% and 17.1%, 95 and 94 within 30%. Holding a finite run's load to
    # its requests (trtllm-bench's 3,000 at 1000/1000 on the MoE points): 16.0% and 17.1%, 96 and 95
    # within 30%. Lowered once more for a units bug: the 910C's per-die dispatch and combine tables were
    # read at a whole chip's tokens (two dies'); read per die, two CloudMatrix decode points left the 30% band
    # in-sample (92 of 121; medians 15.9% and 16.9% unchanged). And for MTP draft passes that paid no per-op
    # floor: charged like the model's own calls, TensorRT-LLM's relaxed-MTP B200 point went from -29.0% to -30.8%
    # (91 and 92 within 30%)
    # Both sets of corrections (serving, expert-parallel decode) together: 16.0% and 16.9%, 93 and 94 within 30%.
    # MindIE's W8A8 checkpoint read as msModelSlim writes it (LM head and down_proj in BF16): 15.7% and 15.7%.
    # Raised for a units correction: Blackwell FP4 routed experts stream at the weight-size sweep's rate for all
    # the experts a grouped launch runs, not the dense curve's one-projection rate (Maverick -38% to -23%, Qwen3 and
    # DeepSeek-R1 FP4 max-throughput worse). Both together: 16.0% and 16.9%, 95 and 96 within 30%.
    # FP8 attention on Hopper at FlashAttention-3's measured FP8/BF16 speedup (1.62), not the peaks' 2: 16.0% and
    # 16.6%, 96 and 97 within 30%. Blackwell likewise at FA4's measured 1.016 (PR #2109), SGLang's GB200 FP4 decode
    # +17.9% to +3.8% crossing the median (Blackwell FP8-KV prefill-heavy points worse): 15.7% and 15.7%,
    # 96 and 97 within 30%. Lowered for a setup correction: quantized checkpoints keep embedding and LM head in BF16
    # (Step-3 3A2F 4K no longer fits in memory, -2% to infeasible): 16.3% and 16.6%, 95 and 96 within 30%.
    # TensorRT-LLM's NVFP4 GEMMs at the time vLLM PR #20646 measured the GEMM alone (its RMSNorm writes NVFP4):
    # 15.2% and 15.2%, 96 and 97 within 30% (dense Llama on B200/GB200 in; TRT-LLM's Qwen3-235B FP4 out, +35%)
    # TP-split NVFP4 experts under TensorRT-LLM on Blackwell at TRTLLM-Gen's measured MoE layer (TensorRT-LLM tech
    # blog 24): DeepSeek-R1 batch-1 on B200 +11.2%/+13.0% to +6.5%/+7.3%, the TP8 EP2 relaxed-MTP run -15.2% to
    # -19.5% (modelled as TP8; it was the median point and now lies above it): 15.4% and 15.4%, 96 and 97 within 30%
    # Raised for a measured table replacing Ascend-derived defaults: A100 16-bit GEMMs take cuBLAS's FP16 efficiency
    # from LLMCompass's A100 80GB sweep (0.755 at M = 128, 0.84 at 2,048) where they took 0.77 of peak and 0.841
    # of bandwidth; TRT-LLM v0.5 Llama-7B TTFT at 128 tokens +60% -> +47%, the 2,048-token ones +8% -> +17% and
    # +7% -> +14% (the table's M sweep is at N = K = 12288; at M = 8192 it measures 4096^2 6% below 12288^2):
    # 15.4% and 15.4% alone, 15.5% and 15.5% after the line above: 96 and 97 within 30%
    # xDeepServe's measured wait at the expert-parallel barriers of a 288-rank 910C decode (arXiv 2508.02520,
    # Figure 20: ep_barrier_balance 0.834) took the CloudMatrix decode points from +36-68% to +23-50% (+45-77% to
    # +31-58% out of sample): 15.2% and 15.2% alone, 15.5% and 15.5% after the lines above; 98 and 97 within 30%
    # xDeepServe's own two decode results added (arXiv 2508.02520 section 7.1; both predicted before anything else
    # changed: DP288 + EP288 +39.3%, disaggregated MoE-Attention +63.4%), then FlowServe's measured 2 ms gap between
    # decode iterations (step_gap): +35.4% and +58.0% in-sample, +56.8% and +63.4% LOSO; both stay misses, so the
    # medians rise from 15.52% to 15.59% and 98 and 97 within 30% are now of 123
    assert ins["median_abs_error"] <= 0.156 and ins["within_30"] >= 98
    assert loso["median_abs_error"] <= 0.156 and loso["within_30"] >= 97
    # leaving a source out can only take information away: no point is predicted better on average
    assert loso["median_abs_error"] >= ins["median_abs_error"]


def test_points_name_declared_sources():
    declared = set(validation.sources())
    for p in validation.points()["point"]:
        assert p["source_id"] in declared, p["id"]
        assert p["metric"] in validation.METRICS, p["id"]
    for sid, s in validation.sources().items():
        assert CITED.search(s["title"]), sid


def test_measured_figures_cite_primary_sources():
    cat = kernel_catalog()
    for group in (cat.gemm, cat.attention, cat.ep_latency, cat.fixed, cat.attention_layer, cat.fused_moe,
                  cat.collective):
        for item in group:
            assert CITED.search(item.source), item.id
    for name, items in efficiency_sources().items():
        for m in items:
            assert CITED.search(m["source"]) and m["source_id"], name


def test_regimes_cover_batch_1_to_over_1000_per_chip():
    points = validation.points()["point"]
    per_chip = [p.get("batch") or p.get("concurrency", 0) / p["chips"] for p in points]
    assert min(x for x in per_chip if x) <= 1 and max(per_chip) > 1000
    assert {validation.regime(p) for p in points} >= {"decode/latency", "decode/throughput", "prefill",
                                                         "serve/latency", "serve/throughput"}


def test_gpt_session_static_batch_fits_its_kv_cache_whole():
    """TensorRT-LLM v0.6.1's A100 LLaMA-7B run at batch 60, 128 in / 2048 out: GptSession sizes its KV cache to
    the batch, so the run needs weights + 60 x 2,176 tokens of KV. By hand: Llama-2-7B holds 6.74e9 BF16
    parameters (13.48 GB) and 2 x 32 layers x 4,096 x 2 B = 524,288 B of KV per token, 68.45 GB for the batch;
    81.9 GB fits the 80 GiB (85.9 GB) A100, but not the 13.48 + 0.9 x (85.9 - 13.48) = 78.7 GB an executor
    leaves with its default 90% free-memory KV pool."""
    from dataclasses import replace

    from modelchip.cost.deploy import evaluate
    p = next(x for x in validation.points()["point"] if x["id"] == "trtllm-v061-a100-llama7b-b60-128-2048")
    assert p["kv_free_memory_fraction"] == 1.0
    cost, d = validation.deployment(p)
    run = replace(d, batch=60, context=128 + 2048)
    pred = evaluate(cost, run)
    assert cost.kv_bytes_per_token == 2 * 32 * 4096 * 2
    assert pred.memory_gb["kv_cache"] * 1e9 == 60 * 2176 * 524288
    assert abs(pred.memory_gb["weights"] - 13.48) < 0.01 and pred.feasible
    executor = evaluate(cost, replace(run, kv_free_fraction=0.0))  # tensorrt-llm's catalogued 0.9 pool
    assert not executor.feasible and abs(executor.memory_gb["usable"] - 78.66) < 0.01
    assert validation.predict_point(p) > 0
