"""The conformance kit passes the reference backend and fails, by name, backends with one wrong op."""

import json

import pytest
from broken_backends import (
    Bf16Linear,
    Bf16Router,
    FP8RowBlockScale,
    InterleavedNibbles,
    InterleavedRotary,
    OtherTieBreakRouter,
    Q6KUnsignedScales,
    Q8ScaleAsBf16,
    StaleDecodeAttention,
    StalePackedLinear,
    SwappedSiluAndMul,
    UnscaledAttention,
    WrongEpsNorm,
)

from modelchip.cli.main import main
from modelchip.conformance import markdown, run
from modelchip.errors import ModelchipError
from modelchip.runtime.contract import OPS


def _failed_ops(report) -> set[str]:
    return {r.op for r in report.ops if not r.passed}


@pytest.mark.slow  # every op case and every family in every dtype
def test_reference_backend_passes_everything():
    report = run("reference")
    assert report.passed, report.failures
    assert {r.op for r in report.ops} == set(OPS)
    assert {(f.family, f.dtype) for f in report.families} >= {("deepseek_v3", "bfloat16"), ("step3_text", "float16")}
    assert report.missing_ops == [] and report.fallback_calls == {"op checks": {}, "model runs": {}}
    card = markdown(report)
    assert "**Result: PASS**" in card and "| step3_text | float32 |" in card


@pytest.mark.parametrize("backend,op,dtypes", [
    (WrongEpsNorm, "rms_norm", ["float32", "bfloat16", "float16"]),
    (UnscaledAttention, "paged_attention", ["float32", "bfloat16", "float16"]),
    (InterleavedRotary, "rotary_embedding", ["float32", "bfloat16", "float16"]),
    (SwappedSiluAndMul, "silu_and_mul", ["float32", "bfloat16", "float16"]),
])
def test_wrong_op_fails_in_every_dtype_and_is_named(register, backend, op, dtypes):
    report = run(register(backend), dtypes=dtypes, families=[])
    assert not report.passed
    assert _failed_ops(report) == {op}
    assert {r.dtype for r in report.ops if not r.passed} == set(dtypes)
    message = next(f for f in report.failures if "float32" in f)
    assert message.startswith(f"op {op} [") and "[" in message.split("]", 1)[1]  # op, case, shape
    assert "max abs error" in message


def test_wrong_epsilon_shows_on_small_activations_even_in_bf16(register):
    report = run(register(WrongEpsNorm), dtypes=["bfloat16"], ops=["rms_norm"], families=[])
    failed = {r.case for r in report.ops if not r.passed}
    assert any("small activations" in case for case in failed)


def test_bf16_linear_fails_the_fp32_dtype_contract(register):
    report = run(register(Bf16Linear), dtypes=["float32"], ops=["linear"], families=["mixtral"])
    bad = [r for r in report.ops if not r.passed]
    assert bad and all(r.op == "linear" for r in bad)
    assert "returned torch.bfloat16, contract requires torch.float32" in bad[0].detail
    assert not report.families[0].passed  # the model's fp32 logits come out in bf16 too


def test_bf16_linear_router_case_runs_even_when_only_bf16_is_asked(register):
    report = run(register(Bf16Linear), dtypes=["bfloat16"], ops=["linear"], families=[])
    bad = [r for r in report.ops if not r.passed]
    assert [r.case for r in bad] == ["router logits (fp32 in every model)"]


def test_bf16_router_weights_fail(register):
    report = run(register(Bf16Router), ops=["moe_route"], families=[])
    assert _failed_ops(report) == {"moe_route"}
    assert all("contract requires torch.float32" in r.detail for r in report.ops)


def test_a_different_choice_among_tied_experts_passes(register):
    report = run(register(OtherTieBreakRouter), ops=["moe_route"], families=["mixtral"])
    assert report.passed, report.failures
    assert any("tied choices resolved differently" in r.detail for r in report.ops)


def test_model_level_bug_is_caught_by_the_family_check(register):
    report = run(register(StaleDecodeAttention), dtypes=["float32"])
    assert _failed_ops(report) == set(), "this bug hides from the op grid by design"
    failed = {f.family for f in report.families if not f.passed}
    assert failed == {"llama", "qwen2", "qwen3", "qwen3_moe", "mixtral", "deepseek_v3", "step3_text"}
    assert any(line.startswith("family llama float32: logits max abs error") for line in report.failures)


def test_missing_ops_are_counted_as_fallbacks(register):
    report = run(register(WrongEpsNorm), dtypes=["float32"], ops=["rms_norm", "linear"], families=["llama"])
    assert report.native_ops == ["rms_norm"]
    assert "linear" in report.missing_ops
    assert report.fallback_calls["op checks"] == {"linear": 4}
    assert report.fallback_calls["model runs"]["paged_attention"] == 2 * 9  # 2 layers x 9 steps
    assert "| linear | 4 |" in markdown(report)


def test_cli_exit_status_and_messages(register, capsys):
    name = register(UnscaledAttention)
    assert main(["conformance", "--backend", name, "--ops", "paged_attention", "--families", "none",
                 "--dtype", "bfloat16"]) == 1
    err = capsys.readouterr().err
    assert "FAIL op paged_attention [prefill, GQA, scale 0.25] q[11, 4, 16]" in err and "bfloat16" in err
    assert main(["conformance", "--backend", "reference", "--ops", "sample", "--families", "llama", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and out["failures"] == [] and out["families"][0]["tokens_matched"] == 16


def test_cli_writes_card(tmp_path, capsys):
    card = tmp_path / "card.md"
    assert main(["conformance", "--backend", "reference", "--ops", "embedding", "--families", "none",
                 "--dtype", "float16", "--card", str(card)]) == 0
    assert "# Conformance card: `reference` on `cpu`" in card.read_text()


def test_bad_arguments_are_user_errors():
    with pytest.raises(ModelchipError, match="unknown backend"):
        run("no-such-backend")
    with pytest.raises(ModelchipError, match="unsupported dtype"):
        run("reference", dtypes=["int8"])
    with pytest.raises(ModelchipError, match="unknown op"):
        run("reference", ops=["matmul"])


def test_prepared_weights_are_checked_apart_from_plain_ones(register):
    report = run(register(StalePackedLinear), dtypes=["float32"], ops=["linear"], families=["llama"])
    failed = {r.case for r in report.ops if not r.passed}
    passed = {r.case for r in report.ops if r.passed}
    assert failed and all(case.endswith("prepared weight") for case in failed)
    assert "decode" in passed  # the same shape with a plain weight is exact
    assert not report.families[0].passed  # every weight of a model goes through prepare_linear


@pytest.mark.slow  # every op case, four families in two dtypes
def test_cpu_backend_passes_everything():
    # families: GQA with biases, sliding window + MoE, MLA + grouped routing, MFA
    report = run("cpu", dtypes=["float32", "bfloat16"], families=["qwen2", "mixtral", "deepseek_v3", "step3_text"])
    assert report.passed, report.failures
    assert any(r.case.endswith("prepared weight") for r in report.ops)
    assert report.fallback_calls == {"op checks": {}, "model runs": {}}


def test_quantized_linear_is_checked_per_format_the_backend_takes():
    report = run("reference", dtypes=["float32", "bfloat16"], ops=["linear"], families=[])
    assert report.passed, report.failures
    assert report.quantized_formats == sorted(["q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "fp8_block", "int8_channel"])
    cases = {r.case.split(" weight")[0] for r in report.ops if " weight, " in r.case}
    assert cases == {"q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "fp8_block", "int8_channel", "int8_channel_w8a8"}
    # the reference dequantizes per call, and says so
    assert report.backend_fallbacks["linear: q4_k weight dequantized per call"] == 4


@pytest.mark.parametrize("backend,variants", [
    (Q8ScaleAsBf16, {"q8_0"}),
    (InterleavedNibbles, {"q4_0", "q4_1"}),
    (FP8RowBlockScale, {"fp8_block"}),
    (Q6KUnsignedScales, {"q6_k"}),
])
def test_wrong_scale_or_block_layout_fails_its_format(register, backend, variants):
    report = run(register(backend), dtypes=["float32", "bfloat16"], ops=["linear"], families=[])
    failed = {r.case.split(" weight")[0] for r in report.ops if not r.passed}
    assert failed == variants
    assert {r.dtype for r in report.ops if not r.passed} == {"float32", "bfloat16"}
    # clearly outside the tolerance, which bounds the worst case of an honest kernel's activation rounding
    # (loosest for FP8: e4m3 activations may be off by 2^-4 each, and this bug only moves some blocks' scales)
    assert min(r.ratio for r in report.ops if not r.passed) > 1.5
    assert all(r.passed for r in report.ops if " weight, " not in r.case)  # plain weights are exact
