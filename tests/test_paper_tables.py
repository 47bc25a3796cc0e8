"""The Step-3 paper's Tables 2, 3 and 6 and Observation 1, reproduced from the models' configs."""

import pytest

from modelchip.cost import compare
from paper_step3 import CHIPS, COST, FIGURE_4_910B, MODELS, OBSERVATION_1, close, tolerance


@pytest.fixture(scope="module")
def result():
    return compare.run(compare.Setting())


def _row(result, model, context):
    (row,) = [r for r in result["rows"] if r["model"] == model and r["context"] == context]
    return row


@pytest.mark.parametrize("model", list(MODELS))
def test_table_2_and_3(result, model):
    a8, b8, a32, b32, c, d = MODELS[model]
    tol = tolerance(model)
    for context, a, b in ((8192, a8, b8), (32768, a32, b32)):
        row = _row(result, model, context)
        for name, ours, printed in (("A", row["kv_bytes"], a), ("B", row["attention_flops"], b),
                                    ("C", row["linear_flops"], c), ("D", row["ffn_flops"], d)):
            assert close(ours, printed, tol), f"{model} {name} at {context}: {ours:.4g} vs paper {printed:.3g}"


@pytest.mark.parametrize("model", list(COST))
def test_table_6(result, model):
    attn8, attn32, ffn = COST[model]
    tol = tolerance(model)
    for i, chip in enumerate(CHIPS):
        for context, attn in ((8192, attn8), (32768, attn32)):
            cost = _row(result, model, context)["cost"][chip]
            assert close(cost["attention"], attn[i], tol), f"{model} attn {chip} {context}: {cost['attention']:.4f}"
            assert close(cost["ffn"], ffn[i], tol), f"{model} FFN {chip}: {cost['ffn']:.4f} vs {ffn[i]}"


@pytest.mark.parametrize("context", [8192, 32768])
def test_observation_1_best_totals(result, context):
    for model, total in OBSERVATION_1[context].items():
        best = _row(result, model, context)["best"]
        assert best["total"] == pytest.approx(total, rel=0.03), (model, context, best)


def test_observation_1_step3_split_is_h800_ffn():
    # the paper's Step-3 optimum puts FFN on H800 and attention on a cheap bandwidth chip
    res = compare.run(compare.Setting(models=("step3",), contexts=(8192, 32768)))
    for row in res["rows"]:
        assert row["best"]["ffn_chip"] == "h800"
        assert row["best"]["attention_chip"] in ("h20", "a800")


@pytest.mark.parametrize("context", [8192, 32768])
def test_figure_4_on_910b(context):
    res = compare.run(compare.Setting(models=("pangu-pro-moe", "step3"), chips=("ascend-910b",),
                                      contexts=(context,)))
    for row in res["rows"]:
        cost = row["cost"]["ascend-910b"]
        assert cost["attention"] + cost["ffn"] == pytest.approx(FIGURE_4_910B[context][row["model"]], rel=0.03)


def test_attention_intensity_section_5_1(result):
    # FLOPs per KV byte with 8-bit KV: Step-3 128, DSv3 512, Qwen3 MoE 32 (section 5.1)
    for model, intensity in (("step3", 128), ("deepseek-v3", 512), ("qwen3-235b-a22b", 32)):
        assert _row(result, model, 8192)["arithmetic_intensity"] == pytest.approx(intensity, rel=1e-9)
