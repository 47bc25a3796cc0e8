"""Fixed per-step costs with published figures: kernel launches of a step not captured in a graph, and the
small-message latency of each collective inside a scale-up domain."""

import json

import pytest

from modelchip.cli.main import main
from modelchip.cost import validation
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.cost.systems import system_for
from modelchip.spec import load_model
from modelchip.spec.chips import TAGS, get_chip, systems

PREC = Precision(weight="fp8", kv="fp8")
# the catalog's figures, read from it (their values are the catalog's to source; these tests check what the
# planner does with them: one launch per op call, one latency per collective)
LAUNCH_S = get_chip("h100").kernel_launch.value
ALL_REDUCE_S = systems()["hgx-h100"].scale_up_latency.value


def _step(model: str, chip: str = "h100", **kw):
    c = get_chip(chip)
    base = dict(chip=c, chips=1, strategy="tp", batch=64, context=192, precision=PREC, system=system_for(c))
    return evaluate(model_cost(load_model(model), PREC), Deployment(**{**base, **kw}))


def test_eager_step_pays_one_launch_per_op_call():
    # Llama-2-7B: 32 layers x (2 norms + 7 attention calls + 3 FFN calls) + embedding, final norm, LM head,
    # sampling = 388 kernels
    assert model_cost(load_model("llama-2-7b"), PREC).op_calls() == 32 * 12 + 4
    eager = _step("llama-2-7b", graphs=False)
    graphed = _step("llama-2-7b")
    assert eager.breakdown_ms["launch"] == pytest.approx(388 * LAUNCH_S * 1e3)
    assert graphed.breakdown_ms["launch"] == 0
    assert eager.tpot_ms - graphed.tpot_ms == pytest.approx(388 * LAUNCH_S * 1e3)


def test_chip_without_a_published_launch_figure_pays_none():
    assert get_chip("h800").kernel_launch is None
    assert _step("llama-2-7b", chip="h800", graphs=False).breakdown_ms["launch"] == 0


def test_each_tp_all_reduce_pays_the_collective_latency():
    tp4 = _step("llama-3.1-70b", chips=4, batch=16).breakdown_ms
    assert tp4["collective_latency"] == pytest.approx(2 * 80 * ALL_REDUCE_S * 1e3)  # two per layer
    assert _step("llama-3.1-8b").breakdown_ms["collective_latency"] == 0  # TP1: no collective


def test_ep_all_to_all_latency_only_inside_the_scale_up_domain():
    kw = dict(strategy="ep", batch=8, context=1024, redundant_experts=0)
    inside = _step("deepseek-v3", chips=8, **kw).breakdown_ms
    assert inside["collective_latency"] == pytest.approx(2 * 58 * ALL_REDUCE_S * 1e3)  # dispatch + combine
    # across HGX nodes DeepEP's decode traffic rides the NICs, whose per-collective latency is not catalogued
    assert _step("deepseek-v3", chips=16, **kw).breakdown_ms["collective_latency"] == 0


def test_fixed_cost_figures_carry_sources():
    launch = get_chip("h100").kernel_launch
    latency = systems()["hgx-h100"].scale_up_latency
    for system in systems().values():
        for name, fig in system.figures().items():
            assert fig.source and fig.tag in TAGS, f"{system.id} {name}"
    assert "HolisticTraceAnalysis" in launch.source
    assert latency.tag == "D" and "vllm-project/vllm/pull/24111" in latency.source


def test_only_the_tensorrt_llm_v05_points_run_without_graphs():
    eager = {p["id"] for p in validation.points()["point"] if not p.get("graphs", True)}
    assert eager == {"trtllm-v05-h100-llama7b-b64", "trtllm-v05-h100-llama70b-b64-tp4"}


def test_predict_no_graphs_flag(capsys):
    args = ["predict", "--model", "llama-2-7b", "--chip", "h100", "--chips", "1", "--strategy", "tp", "--batch",
            "64", "--context", "192", "--json"]
    assert main(args) == 0
    graphed = json.loads(capsys.readouterr().out)
    assert main([*args, "--no-graphs"]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert graphed["breakdown_ms"]["launch"] == 0
    assert eager["breakdown_ms"]["launch"] == pytest.approx(388 * LAUNCH_S * 1e3)
    assert eager["tpot_ms"] > graphed["tpot_ms"]
