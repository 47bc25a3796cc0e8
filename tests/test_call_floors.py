"""Per-call floors and host dispatch of the step time, each against hand arithmetic: a matmul call on MI300X takes
at least the fastest tuned FP8 kernel's time for a small shard (AITER PR #1092), a non-matmul kernel at least a
small RMSNorm's (AITER PR #3747), a vLLM-Ascend step at least its host's dispatch of every operator
(vLLM-Ascend issue #9404), and an AFD decode step on Hopper waits StepMesh's measured 2 ms for its stragglers."""

import pytest

from modelchip.cost import attention
from modelchip.cost import kernel_model as km
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.cost.systems import system_for
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip

FP8 = Precision(weight="fp8", kv="bf16")
MI300X_BW = 5.3e12  # AMD MI300 documentation: 5.3 TB/s


def _eval(model: str, chip: str, precision: Precision = FP8, **kw):
    c = get_chip(chip)
    cost = model_cost(load_model(model), precision)
    base = dict(chip=c, chips=8, strategy="tp", batch=1 / 8, context=1024, precision=precision, system=system_for(c))
    return cost, evaluate(cost, Deployment(**{**base, **kw}))


def test_projection_calls_split_the_projection_weights():
    spec = load_model("llama-3.1-70b")
    a = spec.layers[0].attention
    # Llama 3.1 70B: hidden 8192, 64 query and 8 K/V heads of 128: stacked QKV 8192 x 10240, O 8192 x 8192
    assert attention.projection_calls(a, 8192) == (8192 * (64 * 128 + 2 * 8 * 128), 64 * 128 * 8192)
    for model in ("deepseek-v3", "step3", "minimax-m1", "qwen3-235b-a22b"):
        spec = load_model(model)
        for layer in spec.layers:
            calls = attention.projection_calls(layer.attention, spec.hidden_size)
            assert sum(calls) == attention.projection_weights(layer.attention, spec.hidden_size), model
    # MLA with a low-rank query: q_a, q_b, kv_a, the two absorptions of kv_b, o; Step-3's MFA: the query's
    # first matmul stacked with k and v, then its second, then o
    assert len(attention.projection_calls(load_model("deepseek-v3").layers[0].attention, 7168)) == 6
    assert len(attention.projection_calls(load_model("step3").layers[0].attention, 7168)) == 3


def test_small_op_calls_count_the_non_matmul_kernels():
    # Llama 3.1 70B layer: 2 norms, 2 rotary, 2 KV writes, attention, SiLU-and-mul = 8; 80 layers, plus
    # embedding, final norm and sampling
    assert model_cost(load_model("llama-3.1-70b"), FP8).small_op_calls == 80 * 8 + 3
    # DeepSeek-V3: MLA adds q_a and kv_a norms and one latent write (6 with attention and 2 rotary); the MoE
    # layer's routing and shared SiLU-and-mul are 2, a dense layer's SiLU-and-mul 1; 58 MoE and 3 dense layers
    assert model_cost(load_model("deepseek-v3"), FP8).small_op_calls == 58 * (2 + 6 + 2) + 3 * (2 + 6 + 1) + 3
    # Step-3 (61 layers, MFA with a low-rank query): q norm, 2 rotary, 2 KV writes, attention; 5 dense layers
    # (SiLU-and-mul) and 56 MoE layers with a shared expert (routing, the shared SiLU-and-mul)
    assert model_cost(load_model("step3"), FP8).small_op_calls == 61 * (2 + 6) + 5 * 1 + 56 * 2 + 3


def test_gemm_calls_wait_on_the_measured_floor():
    cost, p = _eval("llama-3.1-70b", "mi300x")
    floor = km.fixed("gemm_call_floor", ("cdna3/fp8",))
    eff = km.gemm_efficiency(get_chip("mi300x"), "fp8", 1, weight="fp8")  # one row per chip: a sequence on TP8

    def call(params: float) -> float:  # FP8 weights of one TP8 shard streamed at the measured efficiency
        return params / 8 / (MI300X_BW * eff)

    # per layer: QKV 10.5 MB and O 8.4 MB shards, gate_up 58.7 MB and down 29.4 MB (FFN 28,672 wide)
    layer = [8192 * 10240, 8192 * 8192, 2 * 8192 * 28672, 8192 * 28672]
    want = 80 * sum(max(0.0, floor - call(w)) for w in layer)
    assert call(layer[0]) < floor < call(layer[2])  # the small attention shards wait, gate_up does not
    head = 128256 * 8192  # the LM head: 263 MB per shard, far above the floor
    want += max(0.0, floor - call(head))
    assert p.breakdown_ms["gemm_call_floor"] == pytest.approx(want * 1e3, rel=1e-9)
    # Llama 405B's shards are four times larger: even O (16,384 x 2,048 per shard, 33.5 MB) streams for 11.7 us,
    # longer than the floor, so 405B pays none of it (its batch-1 step was already within 8% of ROCm's table)
    o405 = 16384 * 16384
    assert call(o405) > floor
    assert _eval("llama-3.1-405b", "mi300x")[1].breakdown_ms["gemm_call_floor"] == 0
    # no figure for Hopper (its small-kernel time is the graph_kernel figure) nor for MI300X in BF16
    assert _eval("llama-3.1-70b", "h100")[1].breakdown_ms["gemm_call_floor"] == 0
    bf16 = Precision(weight="bf16", kv="bf16")
    assert _eval("llama-3.1-70b", "mi300x", precision=bf16)[1].breakdown_ms["gemm_call_floor"] == 0
    # a large prefill streams every call for far longer than the floor
    big = _eval("llama-3.1-70b", "mi300x", batch=8, phase="prefill", prompt_len=2048)[1]
    assert big.breakdown_ms["gemm_call_floor"] == 0
    # leaving AITER's PR out removes the term
    out = _eval("llama-3.1-70b", "mi300x", exclude=frozenset({"aiter-pr-1092"}))[1]
    assert out.breakdown_ms["gemm_call_floor"] == 0


def test_small_kernels_wait_on_the_measured_floor():
    cost, p = _eval("llama-3.1-70b", "mi300x")
    b = p.breakdown_ms
    # 643 non-matmul calls at 2.70 us each, less the roofline time of that work itself
    per_call = km.fixed("small_kernel_floor", ("cdna3",))
    work = b["attention_core"] + b["norms"] + b["sampling"] + b["act_fn"]
    assert b["small_kernel_floor"] == pytest.approx(643 * per_call * 1e3 - work, rel=1e-9)
    assert 1.6 < b["small_kernel_floor"] < 1.8  # 643 x 2.7 us = 1.74 ms at batch 1
    assert _eval("llama-3.1-70b", "h100")[1].breakdown_ms["small_kernel_floor"] == 0
    big = _eval("llama-3.1-70b", "mi300x", batch=8, phase="prefill", prompt_len=2048)[1]
    assert big.breakdown_ms["small_kernel_floor"] == 0


def test_attention_calls_above_the_floor_do_not_hide_the_small_ones():
    # 128 sequences on TP8 at a 1,152-token context: 80 attention calls (one a layer) run above 2.7 us each,
    # the 563 token-sized calls (norms, rotary, KV writes, activation, ...) still below it
    cost, p = _eval("llama-3.1-70b", "mi300x", batch=16, context=1152)
    b = p.breakdown_ms
    per_call = km.fixed("small_kernel_floor", ("cdna3",)) * 1e3
    assert cost.small_op_calls == 643 and cost.layers == 80
    assert b["attention_core"] > 80 * per_call  # the attention group pays no floor
    rest = b["norms"] + b["sampling"] + b["act_fn"]
    assert b["small_kernel_floor"] == pytest.approx(563 * per_call - rest, rel=1e-9)
    # one group would have let the attention's excess hide it: 643 x 2.7 us less all the work is about zero
    assert max(0.0, 643 * per_call - rest - b["attention_core"]) < 0.1 < b["small_kernel_floor"]


def test_host_bound_step_waits_for_dispatch():
    bf16 = Precision(weight="bf16", kv="bf16")
    kw = dict(chips=1, batch=4, context=400, precision=bf16)
    cost, p = _eval("qwen3-8b", "ascend-910b", engine="vllm", **kw)
    # Qwen3-8B: 36 layers of 14 op calls (2 norms, QKV, O, 2 QK norms, 2 rotary, 2 KV writes, attention,
    # gate_up, SiLU-and-mul, down) + 4 = 508 calls at 832 us / 14 per call of host dispatch = 30.2 ms
    assert cost.op_calls() == 36 * 14 + 4
    host = 508 * 832e-6 / 14
    assert km.fixed("host_dispatch", ("davinci/vllm",)) * cost.op_calls() == pytest.approx(host, rel=1e-3)
    device = sum(v for k, v in p.breakdown_ms.items() if k != "host_dispatch_wait")
    assert device < host * 1e3  # 4 sequences of an 8B model: the NPU's own work is ~12 ms
    assert p.breakdown_ms["host_dispatch_wait"] == pytest.approx(host * 1e3 - device, rel=1e-3)
    assert p.tpot_ms == pytest.approx(host * 1e3, rel=1e-3)
    # a prefill long enough to keep the NPU busy hides the dispatch; other engines and chips have no figure
    assert _eval("qwen3-8b", "ascend-910b", engine="vllm", **{**kw, "phase": "prefill", "prompt_len": 2000}
                 )[1].breakdown_ms["host_dispatch_wait"] == 0
    for chip, engine in (("ascend-910b", "mindie"), ("ascend-910b", ""), ("h100", "vllm")):
        assert _eval("qwen3-8b", chip, engine=engine, **kw)[1].breakdown_ms["host_dispatch_wait"] == 0


def test_ascend_prefill_attention_runs_at_the_measured_flash_attention_utilization():
    # pto-isa's 910B2 sweep: torch_npu flash attention forward at 32K tokens, 150.78 TFLOPS = 42.60% utilization
    bf16 = Precision(weight="bf16", kv="bf16")
    cost, p = _eval("qwen3-8b", "ascend-910b", precision=bf16, chips=1, batch=1, phase="prefill",
                    prompt_len=32768)
    flops, _ = cost.prefill_attention(32768)
    want = flops * 32768 / (2.8e14 * 0.4260)  # the catalog 910B's BF16 peak (Step-3 paper, Table 4)
    assert p.breakdown_ms["attention_core"] == pytest.approx(want * 1e3, rel=1e-9)
    # without that publication the scalar default (a decode kernel's compute fraction) applies
    out = _eval("qwen3-8b", "ascend-910b", precision=bf16, chips=1, batch=1, phase="prefill", prompt_len=32768,
                exclude=frozenset({"pto-isa-fa-910b2"}))[1]
    assert out.breakdown_ms["attention_core"] < p.breakdown_ms["attention_core"]


def test_afd_decode_step_waits_the_measured_straggler_gap():
    # StepMesh: mean TPOT exceeds the minimum by about 2 ms on Step-3's AFD deployment (Hopper): added once per
    # decode step of a catalog AFD deployment, on top of the pipelined layers
    kw = dict(chips=32, strategy="afd", attn_chips=16, ffn_chips=16, batch=384, context=4096,
              precision=Precision(weight="fp8", kv="fp8"))
    cost, p = _eval("step3", "h800", **kw)
    assert p.breakdown_ms["afd_straggler_wait"] == pytest.approx(2.0, rel=1e-12)
    without = _eval("step3", "h800", exclude=frozenset({"stepmesh"}), **kw)[1]
    assert without.breakdown_ms["afd_straggler_wait"] == 0
    assert p.tpot_ms - without.tpot_ms == pytest.approx(2.0, rel=1e-9)
    # not for prefill, nor for the other strategies, nor on an architecture without the measurement
    assert _eval("step3", "h800", **{**kw, "phase": "prefill", "prompt_len": 1024})[1].breakdown_ms[
        "afd_straggler_wait"] == 0
    assert _eval("step3", "h800", chips=8, batch=8)[1].breakdown_ms["afd_straggler_wait"] == 0
    assert _eval("step3", "ascend-910b", **kw)[1].breakdown_ms["afd_straggler_wait"] == 0


def test_flowserve_decode_pays_the_measured_step_gap():
    # xDeepServe section 7.1: ~93 ms of kernels per FlowServe decode iteration + a ~2 ms scheduling gap between
    # iterations; (93 + 2) / 1.9 tokens = 50 ms TPOT. One gap per decode step, keyed to the engine on 910C
    assert abs((93 + 2) / 1.9 - 50.0) < 1e-9
    int8 = Precision(weight="int8", kv="bf16")
    kw = dict(chips=144, strategy="ep", batch=120, context=3072, redundant_experts=32, precision=int8)
    cost, p = _eval("deepseek-r1", "ascend-910c", engine="flowserve", **kw)
    assert p.breakdown_ms["step_gap"] == pytest.approx(2.0, rel=1e-12)
    plain = _eval("deepseek-r1", "ascend-910c", **kw)[1]
    assert plain.breakdown_ms["step_gap"] == 0
    assert p.tpot_ms - plain.tpot_ms == pytest.approx(2.0, rel=1e-9)  # no MTP: one token per step
    assert _eval("deepseek-r1", "ascend-910c", engine="flowserve", exclude=frozenset({"xdeepserve-paper"}),
                 **kw)[1].breakdown_ms["step_gap"] == 0
    # not for prefill, not for another engine's measurement key, not on another architecture
    assert _eval("deepseek-r1", "ascend-910c", engine="flowserve", **{**kw, "phase": "prefill", "prompt_len": 1024,
                                                                       "batch": 1})[1].breakdown_ms["step_gap"] == 0
    assert _eval("deepseek-r1", "ascend-910c", engine="vllm", **kw)[1].breakdown_ms["step_gap"] == 0
    assert _eval("deepseek-r1", "h800", engine="flowserve", **{**kw, "precision": Precision(weight="fp8", kv="fp8")}
                 )[1].breakdown_ms["step_gap"] == 0


def test_ep_decode_waits_the_measured_barrier_balance():
    # xDeepServe Figure 20 (DP288 + EP288 on 910C): dispatch 234 us on average against 185 at its fastest, combine
    # 312 against 165, of an iteration 15.3% dispatch and 20.4% combine: 12.8% waiting, 64.3% computing
    wait = 0.153 * (234 - 185) / 234 + 0.204 * (312 - 165) / 312
    assert 0.643 / (0.643 + wait) == pytest.approx(0.834, abs=5e-4)
    int8 = Precision(weight="int8", kv="bf16")
    kw = dict(chips=144, strategy="ep", batch=96, context=4224, redundant_experts=32, precision=int8)
    cost, p = _eval("deepseek-r1", "ascend-910c", **kw)  # 144 chips of two dies: 288 ranks
    b = p.breakdown_ms
    compute = sum(b[k] for k in ("attention_proj", "attention_core", "lm_head", "norms", "sampling", "dense_ffn",
                                 "moe", "moe_imbalance", "router", "act_fn", "dp_attention_wait",
                                 "gemm_call_floor", "small_kernel_floor", "cold_op_host", "moe_expert_host"))
    charged = b["moe_imbalance"] + b["dp_attention_wait"]
    want = (compute - charged) * (1 / 0.834 - 1) - charged
    assert want > 0 and b["ep_barrier_wait"] == pytest.approx(want, rel=1e-9)
    without = _eval("deepseek-r1", "ascend-910c", exclude=frozenset({"xdeepserve-paper"}), **kw)[1]
    assert without.breakdown_ms["ep_barrier_wait"] == 0
    assert p.tpot_ms - without.tpot_ms == pytest.approx(want, rel=1e-9)
    # measured at 288 ranks: not below that, not for prefill, not on another architecture
    assert _eval("deepseek-r1", "ascend-910c", **{**kw, "chips": 72})[1].breakdown_ms["ep_barrier_wait"] == 0
    assert _eval("deepseek-r1", "ascend-910c", **{**kw, "phase": "prefill", "prompt_len": 1024, "batch": 1}
                 )[1].breakdown_ms["ep_barrier_wait"] == 0
    assert _eval("deepseek-r1", "h800", **{**kw, "chips": 288, "precision": Precision(weight="fp8", kv="fp8")}
                 )[1].breakdown_ms["ep_barrier_wait"] == 0
