"""The seeds' headline numbers, explained by the tool rather than copied."""

from pathlib import Path

import pytest

from modelchip.cli.main import main
from modelchip.cost import accounting, compare
from modelchip.spec import load_model

MFA_7B = str(Path(__file__).parent.parent / "examples" / "mfa-paper-7b.json")


@pytest.mark.parametrize("model,bytes_per_token", [
    ("deepseek-v3", 70_272), ("qwen2.5-72b", 327_680), ("llama-3.1-405b", 516_096),
])
def test_deepseek_isca25_kv_table_is_exact(model, bytes_per_token):
    # "Insights into DeepSeek-V3" (arXiv 2505.09343) Table 1, BF16 KV per token
    assert accounting.kv_cache_bytes_per_token(load_model(model), "bf16") == bytes_per_token


def test_mfa_kr_vs_mha_reduction_in_the_mfa_papers_7b_setting():
    mha = accounting.kv_cache_bytes_per_token(load_model(MFA_7B, ["attention=mha"]), "bf16")
    mfa = accounting.kv_cache_bytes_per_token(load_model(MFA_7B, ["head_dim=256", "attention=mfa"]), "bf16")
    kr = accounting.kv_cache_bytes_per_token(load_model(MFA_7B, ["head_dim=256", "attention=mfa-kr"]), "bf16")
    assert (mha, mfa, kr) == (196_608, 24_576, 12_288)  # the paper's 196.6K / 24.6K / 12.3K
    assert 1 - kr / mha == pytest.approx(0.937, abs=0.001)  # the seeds' "93.7% KV-cache reduction"


def test_kv_command_shows_the_reduction(capsys):
    refs = [f"{MFA_7B}:attention=mha", f"{MFA_7B}:head_dim=256,attention=mfa-kr"]
    assert main(["kv", *refs]) == 0
    assert "-93.8%" in capsys.readouterr().out  # 93.75% exactly; the paper rounds down to 93.7


def test_dsv3_over_step3_attention_cost_on_910b_at_32k():
    # the seeds' "300% on domestic chips" is this cost-model ratio (0.407 / 0.133)
    res = compare.run(compare.Setting(models=("deepseek-v3", "step3"), chips=("ascend-910b",), contexts=(32768,)))
    cost = {r["model"]: r["cost"]["ascend-910b"]["attention"] for r in res["rows"]}
    assert cost["deepseek-v3"] / cost["step3"] == pytest.approx(3.06, rel=0.03)
