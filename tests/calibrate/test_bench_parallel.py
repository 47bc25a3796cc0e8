"""`modelchip bench` over parallel layouts: each layout of a tiny MoE checkpoint is run, timed, and set beside
the planner's prediction from a profile's measured collectives (made-up figures, real structure)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
from modelchip.calibrate.loop import BenchLayout, predict_parallel  # noqa: E402
from modelchip.conformance.tiny_checkpoint import write_checkpoint  # noqa: E402
from modelchip.conformance.tiny_models import CONFIGS  # noqa: E402

FITS = {"all_reduce": (80e-6, 1.5e9), "all_gather": (90e-6, 0.8e9), "all_to_all": (120e-6, 0.6e9),
        "send_recv": (40e-6, 3e9), "broadcast_object": (150e-6, 0.4e9)}


def _profile(path):
    src = {"source": "test", "tag": "D"}
    fits = {name: {"alpha_s": a, "bandwidth_Bps": bw} for name, (a, bw) in FITS.items()}
    path.write_text(json.dumps({
        "id": "test-cpu", "name": "test CPU", "vendor": "measured", "kind": "cpu",
        "flops": {"bf16": {"value": 1e12, **src}, "fp32": {"value": 5e11, **src}},
        "memory": {"capacity": {"value": 64e9, **src}, "bandwidth": {"value": 40e9, **src}},
        "efficiency": {"gemm": 1.0, "memory": 0.8, "attention_memory": 0.5},
        "overhead": {"per_op_s": 5e-6, "per_seq_s": 2e-6, "per_step_s": 1e-4, "per_seq_step_s": 1e-5},
        "calibrated": {"threads": 2},
        "collectives": {"backend": "reference", "device": "cpu", "process_group": "gloo", "threads": 2,
                        "cpus": 2, "shared_device": True,
                        "by_world_size": {"2": {"threads_per_rank": 1, "raw": {}, "fit": fits}}}}))
    return path


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "modelchip", "bench", "--backend", "reference", "--dtype",
                           "float32", *args], capture_output=True, text=True, timeout=900)  # a hang guard


@pytest.mark.slow  # spawns a process group per layout
def test_bench_compares_ep_dp_ep_and_afd_with_the_prediction(tmp_path):
    model = str(write_checkpoint(CONFIGS["qwen3_moe"], tmp_path / "moe", seed=3))
    profile = str(_profile(tmp_path / "profile.json"))
    common = ["--model", model, "--batch", "2", "--context", "8", "--steps", "2", "--profile", profile, "--json"]
    p = _bench(*common, "--expert-parallel-size", "1", "2", "--afd", "1", "1")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    assert [r["layout"] for r in rows] == ["1 process", "ep 2", "afd 1+1 (2 micro-batches)"]
    layouts = [BenchLayout("ep", 1), BenchLayout("ep", 2), BenchLayout("afd", 1, 1, 2)]
    for r, layout in zip(rows, layouts, strict=True):
        # (the share may pass 1 on a busy machine: both are medians, of different steps' samples)
        assert r["ranks"] == layout.world_size and r["step_s"] > 0 and r["comm_s"] >= 0
        assert r["comm_share"] == pytest.approx(r["comm_s"] / r["step_s"], rel=1e-12)
        want = predict_parallel(model, profile, layout, 2, 8 + 1, "float32")
        assert r["predicted_step_s"] == pytest.approx(want.tpot_ms / 1e3, rel=1e-9)
        assert r["error"] == pytest.approx(r["predicted_step_s"] / r["step_s"] - 1, rel=1e-9)
    assert rows[0]["comm_s"] == 0 and rows[0]["predicted_comm_share"] == 0
    assert rows[1]["comm_s"] > 0 and rows[2]["comm_s"] > 0  # rank 0 really waited on the other rank
    # waits past the polling budget are counted (how many depends on the machine; one process has none)
    assert rows[0]["blocked_waits"] == 0 and all(isinstance(r["blocked_waits"], int) and r["blocked_waits"] >= 0
                                                 for r in rows)
    p = _bench(*common, "--expert-parallel-size", "2", "--data-parallel-attention")
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)["rows"]
    assert row["layout"] == "dp+ep 2" and row["predicted_step_s"] == pytest.approx(
        predict_parallel(model, profile, BenchLayout("dp+ep", 2), 2, 9, "float32").tpot_ms / 1e3, rel=1e-9)


def test_bench_refuses_layouts_that_cannot_run():
    p = _bench("--data-parallel-attention")
    assert p.returncode != 0 and "--data-parallel-attention goes with --expert-parallel-size" in p.stderr
    p = _bench("--afd", "0", "1")
    assert p.returncode != 0 and "parallel sizes must be at least 1, got 0" in p.stderr
