"""Per-format weight streaming: the table a calibration writes, how the planner reads it, and what the
measurement records about what a backend kept. The planner side needs no torch; values are checked against
hand-computed figures."""

import json
import subprocess
import sys

import pytest

from modelchip.cost import streaming
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.cost.profile import apply_profile
from modelchip.errors import ModelchipError
from modelchip.spec import families
from modelchip.spec.chips import get_chip

# rates chosen so log2-interpolation lands on round numbers
Q4_1 = {"kept": "packed", "note": "", "bytes_per_s": [[16, 2e9], [1, 8e9], [4, 4e9]],
        "seconds_per_call": [[1, 1e-4], [4, 2e-4], [16, 4e-4]]}
Q8_0 = {"kept": "dequantized at prepare", "note": "no q8_0 kernel", "bytes_per_s": [[1, 6e9]]}
CONFIG = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
          "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}


def _profile(tmp_path, formats: dict | None) -> str:
    """A profile as `calibrate` writes it, with round figures: a peak no decode matmul gets near, so the weight
    read is every matmul's term."""
    data = {"id": "test-cpu", "kind": "cpu", "flops": {"fp32": {"value": 1e15}, "bf16": {"value": 1e15}},
            "memory": {"capacity": {"value": 64e9}, "bandwidth": {"value": 50e9}},
            "efficiency": {"gemm": 1.0, "memory": 0.5, "memory_by_tokens": [[1, 0.5], [16, 0.25]]},
            "overhead": {"per_op_s": 0.0}}
    if formats is not None:
        data["weight_streaming"] = {"matrix": [576, 1536], "activations": "bfloat16", "formats": formats}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_the_table_interpolates_rates_in_log_rows():
    (table,) = streaming.parse({"formats": {"q4_1": Q4_1}})
    assert table.rates == ((1.0, 8e9), (4.0, 4e9), (16.0, 2e9))  # sorted by rows
    assert table.rate(1) == 8e9 and table.rate(4) == 4e9 and table.rate(16) == 2e9
    assert table.rate(2) == pytest.approx(6e9)  # halfway in log2 from 1 to 4: 8 + (4 - 8) / 2
    assert table.rate(8) == pytest.approx(3e9)  # halfway from 4 to 16
    assert table.rate(0.5) == 8e9 and table.rate(64) == 2e9  # the nearest measured outside the table
    assert table.per_call_s[1] == (4.0, 2e-4)
    assert streaming.lookup((table,), "Q4_1") is table and streaming.lookup((table,), "q8_0") is None
    assert streaming.parse(None) == ()


@pytest.mark.parametrize("section, problem", [
    ({"formats": {"q5_9": Q4_1}}, "not a weight format the planner knows"),
    ({"formats": {"q4_1": {**Q4_1, "bytes_per_s": [[1, 0.0]]}}}, "values > 0"),
    ({"formats": {"q4_1": {**Q4_1, "bytes_per_s": [[1, 1e9], [1, 2e9]]}}}, "listed twice"),
    ({"formats": {"q4_1": {**Q4_1, "bytes_per_s": [1e9]}}}, "list of \\[rows, value\\] pairs"),
    ({"formats": {"q4_1": {**Q4_1, "bytes_per_s": []}}}, "no measurements"),
    ({"formats": {"q4_1": {**Q4_1, "kept": "guessed"}}}, "kept 'guessed'"),
    ({"q4_1": Q4_1}, "'formats' table"),
])
def test_a_bad_table_is_refused_by_name(section, problem):
    with pytest.raises(ModelchipError, match=problem):
        streaming.parse(section, "p.json")


def _predict(path: str, precision: Precision, batch: int):
    spec = families.read(CONFIG, "smollm2-like")
    d = Deployment(chip=get_chip("h100"), chips=1, strategy="tp", batch=batch, context=64, precision=precision)
    cost = model_cost(spec, precision)
    d = apply_profile(d, path)
    return cost, d, evaluate(cost, d)


@pytest.mark.parametrize("batch, rate", [(1, 8e9), (2, 6e9), (16, 2e9)])
def test_the_weight_read_of_a_packed_format_is_its_packed_bytes_over_the_measured_rate(tmp_path, batch, rate):
    path = _profile(tmp_path, {"q4_1": Q4_1, "q8_0": Q8_0})
    precision = Precision(weight="q4_1", kv="bf16", compute="bf16", lm_head_weight="q8_0")
    cost, d, p = _predict(path, precision, batch)
    assert not any("q4_1" in n for n in d.notes)  # measured, and kept packed
    # 20 bytes per 32 weights, at the rate measured at `batch` rows
    assert p.breakdown_ms["dense_ffn"] == pytest.approx(cost.dense_params * 20 / 32 / rate * 1e3, rel=1e-12)
    assert p.breakdown_ms["attention_proj"] == pytest.approx(cost.attn_params * 20 / 32 / rate * 1e3, rel=1e-12)
    # the tied LM head in its own format: 34 bytes per 32 weights at q8_0's one measured rate
    assert p.breakdown_ms["lm_head"] == pytest.approx(49152 * 576 * 34 / 32 / 6e9 * 1e3, rel=1e-12)


def test_a_format_measured_on_what_the_backend_kept_says_so(tmp_path):
    path = _profile(tmp_path, {"q8_0": Q8_0})
    _, d, _ = _predict(path, Precision(weight="q8_0", kv="bf16", compute="bf16"), 1)
    assert len(d.notes) == 1 and "dequantized at prepare (no q8_0 kernel)" in d.notes[0]


def test_a_profile_without_the_format_falls_back_to_the_float_efficiency_with_a_note(tmp_path):
    for formats in (None, {"q8_0": Q8_0}):  # written before per-format tables, or without this format
        path = _profile(tmp_path, formats)
        cost, d, p = _predict(path, Precision(weight="q4_1", kv="bf16", compute="bf16"), 1)
        assert any("no measured q4_1 weight streaming" in n for n in d.notes)
        # packed bytes over the float bandwidth x the measured float efficiency at one row (50 GB/s x 0.5)
        assert p.breakdown_ms["dense_ffn"] == pytest.approx(cost.dense_params * 20 / 32 / 25e9 * 1e3, rel=1e-12)
    # float weights need no table and get no note
    _, d, _ = _predict(path, Precision(weight="bf16", kv="bf16", compute="bf16"), 1)
    assert d.notes == ()


def test_predict_prints_the_fallback_note(tmp_path):
    path = _profile(tmp_path, {"q8_0": Q8_0})
    p = subprocess.run([sys.executable, "-m", "modelchip", "predict", "--profile", path, "--model", "smollm2-135m",
                        "--num-chips", "1", "--strategy", "tp", "--batch", "1", "--context", "64",
                        "--weight-dtype", "q4_1", "--kv-dtype", "bf16"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "note: profile" in p.stderr and "no measured q4_1 weight streaming" in p.stderr


# ---------------------------------------------------------------- the measurement, through real backends

def _backend(name: str):
    pytest.importorskip("torch")
    from modelchip.runtime.backends import get_backend

    ops = get_backend(name, "cpu")
    if name == "cpu" and ops.backend.kernels is None:
        pytest.skip(f"cpu kernels not built: {ops.backend.kernels_missing}")
    return ops


def test_a_packed_format_is_measured_per_packed_byte_and_per_call():
    from modelchip.calibrate import quant_streaming

    entry = quant_streaming.measure_format(_backend("cpu"), "q4_1", rows=(1, 2), pool_bytes=2 << 20)
    assert entry["kept"] == "packed" and entry["note"] == ""
    assert entry["bits_per_weight"] == 5.0  # 20 bytes per 32 weights
    assert entry["pool_matrices"] == (2 << 20) // (576 * 1536 * 20 // 32)  # 3 matrices of 552,960 bytes
    # rate and per-call time are two views of one timing: bytes/s x seconds per call = one matrix's packed bytes
    for (m, rate), (m2, per_call) in zip(entry["bytes_per_s"], entry["seconds_per_call"], strict=True):
        assert m == m2 and rate * per_call == pytest.approx(576 * 1536 * 20 / 32, rel=1e-12)
    # and the planner reads back what the calibration wrote
    (table,) = streaming.parse({"formats": {"q4_1": entry}})
    assert table.rate(1) == entry["bytes_per_s"][0][1]


def test_what_the_backend_kept_is_recorded():
    from modelchip.calibrate import quant_streaming

    # the cpu backend has no Q4_K kernel: it dequantizes at prepare and counts why
    entry = quant_streaming.measure_format(_backend("cpu"), "q4_k", rows=(1,), pool_bytes=1 << 20)
    assert entry["kept"] == "dequantized at prepare" and "q4_k weight dequantized at prepare" in entry["note"]
    # the reference backend keeps the packed weight and unpacks it in every linear
    entry = quant_streaming.measure_format(_backend("reference"), "q8_0", rows=(1,), pool_bytes=1 << 20)
    assert entry["kept"] == "unpacked per call"
