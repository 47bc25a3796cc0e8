"""Calibration: the profile it writes is a valid chip for the cost model, and the cost model uses it."""

import json
import subprocess
import sys

import pytest

from modelchip.cost.efficiency import defaults
from modelchip.cost.profile import load_profile
from modelchip.errors import ModelchipError

pytest.importorskip("torch")
from modelchip.calibrate.microbench import MAX_SPREAD, spread, steady_samples  # noqa: E402


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "profile.json"
    # (the timeout is a hang guard, not a speed check: benchmarks/ time it)
    p = subprocess.run([sys.executable, "-m", "modelchip", "calibrate", "--passes", "2", "--out", str(path)],
                       capture_output=True, text=True, timeout=3600)
    assert p.returncode == 0, p.stderr
    return path


@pytest.mark.slow  # runs `modelchip calibrate`
def test_profile_is_a_catalog_chip_with_measured_figures(profile):
    # (efficiencies are clamped into (0, 1] and overheads floored by the code itself: bounds on them could not
    # fail, so what is checked is that the profile reads back as a chip and says where its figures came from)
    chip, eff, overhead = load_profile(profile)
    assert chip.peak("fp32") > 1e9 and chip.bandwidth > 1e9 and chip.memory_capacity.value > 1e9
    assert all(f.source.startswith("modelchip calibrate") for f in chip.figures().values())
    data = json.loads(profile.read_text())
    assert data["calibrated"]["backend"] == "reference" and data["calibrated"]["fallbacks"]["missing_ops"] == []
    # every timing records how far its rounds spread, and the ones that stayed unsteady are named
    spreads = data["measurements"]["spread"]
    assert {f"pass {i}: {name}" for i in (1, 2) for name in ("read bandwidth", "toy step 4 layers 1 seqs",
                                                                 "attention decode 4x4096")} <= set(spreads)
    assert data["measurements"]["unsteady"] == sorted(k for k, v in spreads.items() if v["spread"] > MAX_SPREAD)


@pytest.mark.slow  # runs `modelchip calibrate`
def test_predict_with_profile(profile):
    p = subprocess.run([sys.executable, "-m", "modelchip", "predict", "--profile", str(profile), "--model",
                        "smollm2-135m", "--num-chips", "1", "--strategy", "tp", "--batch", "4", "--context", "256",
                        "--weight-dtype", "fp32", "--kv-dtype", "fp32", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    chip, *_ = load_profile(profile)
    assert out["chip"] == chip.id and out["feasible"]
    assert out["breakdown_ms"]["host_overhead"] > 0  # the calibrated fixed costs enter the step


def test_weight_memory_interpolates_the_measured_table():
    eff = defaults().override({"memory_by_tokens": [[1, 0.9], [4, 0.5], [16, 0.3]]})
    assert eff.weight_memory(1) == 0.9 and eff.weight_memory(16) == 0.3 and eff.weight_memory(64) == 0.3
    assert eff.weight_memory(2) == pytest.approx(0.7)  # halfway in log2 between 1 and 4
    assert defaults().weight_memory(8) == defaults().memory


def test_bad_profile(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{}")
    with pytest.raises(ModelchipError, match="not a modelchip chip profile"):
        load_profile(bad)
    with pytest.raises(ModelchipError, match="cannot read profile"):
        load_profile(tmp_path / "missing.json")
    with pytest.raises(ModelchipError, match="unknown efficiency"):
        defaults().override({"speed": 0.5})


@pytest.mark.slow  # runs `modelchip calibrate`
def test_weight_streaming_is_taken_for_the_weight_dtype(profile):
    # a backend streams bf16 and fp32 weights at their own rates; a bf16 prediction must use the bf16 table
    data = json.loads(profile.read_text())
    per_dtype = data["efficiency"]["by_weight_dtype"]
    assert set(per_dtype) == {"fp32", "bf16"}
    _, fp32, _ = load_profile(profile, "fp32")
    _, bf16, _ = load_profile(profile, "bf16")
    assert bf16["memory_by_tokens"] == per_dtype["bf16"]["memory_by_tokens"]
    assert fp32["memory"] == per_dtype["fp32"]["memory"] == data["efficiency"]["memory"]
    assert "by_weight_dtype" not in load_profile(profile)[1]


def test_spread_is_the_interquartile_range_over_the_median():
    # quartiles by hand (inclusive method): [1, 2, 3, 4, 100] -> q1 = 2, median 3, q3 = 4
    assert spread([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx((4 - 2) / 3)
    assert spread([5.0] * 7) == 0


def test_a_disturbed_sample_is_measured_again():
    # the first attempt's rounds spread by 50% (a burst of other work); the second is steady and is kept
    attempts = iter([[1.0, 1.0, 1.5, 2.0, 2.0], [1.0, 1.01, 1.0, 0.99, 1.0]])
    timing = steady_samples(lambda: next(attempts))
    assert timing.attempts == 2 and timing.seconds == 1.0 and timing.steady


def test_a_sample_that_stays_disturbed_is_reported():
    rounds = [1.0, 1.0, 1.5, 2.0, 2.0]
    timing = steady_samples(lambda: list(rounds))
    assert not timing.steady and timing.seconds == 1.5 and timing.attempts > 1


def test_a_disturbed_bench_round_is_outvoted():
    from modelchip.calibrate.loop import summarize

    # four rounds of 4 sequences: the third ran while other work held the cores (twice as slow)
    r = summarize(4, [0.010, 0.011, 0.020, 0.010], context=150)
    assert r.tokens_per_s == pytest.approx(4 / 0.0105)  # the median round, not the mean (4 / 0.01275)
    assert r.disturbed_rounds == 1 and r.rounds == 4
    assert summarize(1, [0.010, 0.0105, 0.0101], context=150).disturbed_rounds == 0


def _figures(scale: float, op_alone: float = 3e-6, fused: bool = False) -> dict:
    """One calibration pass's raw figures, synthetic, every time x scale (a busy machine)."""
    import modelchip.calibrate.profile as prof

    f = {f"gemm {d} {m}x{k}x{n}": 1e11 / scale for d in prof.DTYPES for m, k, n in prof.GEMM_SHAPES}
    f |= {f"stream {d} {m}": 2e10 / scale for d in prof.DTYPES for m in prof.STREAM_TOKENS}
    f |= {f"stream {d}": 2e10 / scale for d in prof.DTYPES} | {"read": 2.5e10 / scale}
    f |= {"attention 4x4096": 1e-3 * scale, "attention 1x16": 1e-5 * scale, "attention 16x16": 4e-5 * scale,
          "op alone": op_alone * scale, "moe expert": 2e-5 * scale, "op calls 1 layers": 20, "op calls 4 layers": 62,
          "toy step 1 layers 1 seqs": 2e-4 * scale, "toy step 4 layers 1 seqs": 5e-4 * scale,
          "toy step 1 layers 16 seqs": 3e-4 * scale, "toy step 4 layers 16 seqs": 8e-4 * scale,
          "fused layers": float(fused)}
    f |= {f"op cold after {n} bytes": (1e-5 if n < 32 << 20 else 6e-5) * scale
          for n in prof.microbench.COLD_STREAM_BYTES}
    return f


def test_a_disturbed_calibration_pass_is_outvoted(monkeypatch):
    import modelchip.calibrate.profile as prof

    # three passes of synthetic figures; the second ran on a busy machine (every time 1.5x, every rate 2/3)
    def figures(scale: float) -> dict:
        return _figures(scale)

    scales = iter([1.0, 1.5, 1.02])
    monkeypatch.setattr(prof, "_measure_pass", lambda ops, dev, progress: figures(next(scales)))
    monkeypatch.setattr(prof, "_packed_streaming", lambda ops, progress: {})  # measured once, outside passes
    profile = prof.calibrate(progress=lambda m: None, passes=3)
    assert profile["measurements"]["disturbed_passes"] == [2]
    # by hand from the median pass (scale 1.02): per sequence (4e-5 - 1e-5) / 15 = 2e-6 s, x 1.02;
    # per op call (5e-4 - 2e-4 - 3 x 2e-6) / (62 - 20) = 7e-6 s, x 1.02
    assert profile["overhead"]["per_seq_s"] == pytest.approx(2e-6 * 1.02)
    assert profile["overhead"]["per_op_s"] == pytest.approx(7e-6 * 1.02)
    assert profile["overhead"]["per_expert_s"] == pytest.approx(2e-5 * 1.02)  # the median pass's, as measured
    assert profile["overhead"]["cold_op_s"][-1] == [128 << 20, pytest.approx(6e-5 * 1.02)]
    assert profile["memory"]["bandwidth"]["value"] == pytest.approx(2.5e10 / 1.02)


@pytest.mark.parametrize("fused", [False, True])
def test_an_op_in_a_model_costs_at_least_the_op_alone_unless_the_layers_are_fused(monkeypatch, fused):
    import modelchip.calibrate.profile as prof

    # an op alone costs 2e-5 s; three more layers add (5e-4 - 2e-4 - 3 x 2e-6) / 42 = 7e-6 s per op call. Op by
    # op, Python glue sits between the calls, so the in-model cost is floored at the op alone; a fused stack has
    # no glue, and what the layers add is the cost
    monkeypatch.setattr(prof, "_measure_pass", lambda ops, dev, progress: _figures(1.0, 2e-5, fused))
    monkeypatch.setattr(prof, "_packed_streaming", lambda ops, progress: {})
    profile = prof.calibrate(progress=lambda m: None, passes=1)
    assert profile["overhead"]["per_op_s"] == pytest.approx(7e-6 if fused else 2e-5)
    assert profile["measurements"]["fused_layers"] is fused


def test_bench_refuses_counts_below_one():
    p = subprocess.run([sys.executable, "-m", "modelchip", "bench", "--rounds", "0"], capture_output=True, text=True)
    assert p.returncode == 2 and "--rounds: 0 is not at least 1" in p.stderr
    p = subprocess.run([sys.executable, "-m", "modelchip", "calibrate", "--passes", "two"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "--passes: 'two' is not a whole number" in p.stderr


@pytest.mark.slow  # runs `modelchip calibrate`
def test_the_profile_measures_every_packed_format_the_backend_takes(profile):
    # the reference backend takes every format and unpacks it inside each linear: measured as it keeps it
    from modelchip.cost import streaming

    data = json.loads(profile.read_text())
    tables = streaming.parse(data["weight_streaming"], str(profile))
    assert {t.format for t in tables} == set(streaming.PACKED)
    assert {t.kept for t in tables} == {"unpacked per call"}
    assert all(len(t.rates) == len(data["weight_streaming"]["rows"]) for t in tables)
    assert "weight streaming q4_1 16 rows" in data["measurements"]["spread"]
