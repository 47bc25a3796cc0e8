"""Measured collectives in the cost model: the alpha-beta fit, the profile's collectives section, and the
tensor-parallel step the planner costs with them (no torch needed)."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from modelchip.cost import collectives
from modelchip.cost.collectives import (
    LinkFit,
    MeasuredCollectives,
    fit_alpha_beta,
    fit_sync_wait,
    read_collectives,
)
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.cost.profile import apply_profile
from modelchip.errors import ModelchipError
from modelchip.spec import families
from modelchip.spec.chips import get_chip

SIZES = [256 << (2 * i) for i in range(9)]  # the calibration's sweep, 256 B .. 16 MiB


def _reference_fit(sizes, seconds):
    """float64 weighted least squares: rows [1, n] and t, each scaled by 1/t."""
    n, t = np.asarray(sizes, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    a = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
    (alpha, g), *_ = np.linalg.lstsq(a, t / t, rcond=None)
    return alpha, g


def test_fit_matches_float64_least_squares_on_noisy_timings():
    rng = np.random.default_rng(0)
    alpha, bw = 60e-6, 2.5e9
    seconds = [(alpha + n / bw) * rng.lognormal(0, 0.08) for n in SIZES]  # 8% multiplicative noise
    fit = fit_alpha_beta(SIZES, seconds)
    ref_alpha, ref_g = _reference_fit(SIZES, seconds)
    assert fit.alpha_s == pytest.approx(ref_alpha, rel=1e-9)
    assert 1 / fit.bandwidth == pytest.approx(ref_g, rel=1e-9)
    assert fit.alpha_s == pytest.approx(alpha, rel=0.15) and fit.bandwidth == pytest.approx(bw, rel=0.15)


def test_fit_recovers_exact_alpha_beta():
    seconds = [30e-6 + n / 1e9 for n in SIZES]
    fit = fit_alpha_beta(SIZES, seconds)
    assert fit.alpha_s == pytest.approx(30e-6, rel=1e-9) and fit.bandwidth == pytest.approx(1e9, rel=1e-9)
    assert fit.seconds(1 << 20) == pytest.approx(30e-6 + (1 << 20) / 1e9)


def test_fit_keeps_both_terms_non_negative():
    # times falling with size (a noisy flat sweep) would fit a negative slope: latency only, bandwidth unbounded
    flat = fit_alpha_beta([1e3, 1e4, 1e5], [2e-4, 1.9e-4, 1.8e-4])
    assert flat.bandwidth == math.inf and flat.alpha_s == pytest.approx(
        sum(1 / t for t in [2e-4, 1.9e-4, 1.8e-4]) / sum(1 / t ** 2 for t in [2e-4, 1.9e-4, 1.8e-4]))
    # a pure bandwidth sweep whose fit would give a negative intercept: alpha 0, bandwidth refitted alone
    steep = fit_alpha_beta([1e3, 1e6, 1e7], [1e-7, 1e-3, 1.1e-2])
    assert steep.alpha_s == 0.0 and steep.bandwidth > 0


def test_fit_rejects_bad_input():
    with pytest.raises(ModelchipError, match="at least two"):
        fit_alpha_beta([1024], [1e-5])
    with pytest.raises(ModelchipError, match="positive times"):
        fit_alpha_beta([1024, 2048], [1e-5, 0.0])


FITS = {"all_reduce": LinkFit(80e-6, 1.5e9), "all_gather": LinkFit(90e-6, 0.8e9),
        "all_to_all": LinkFit(120e-6, 0.6e9), "send_recv": LinkFit(40e-6, 3e9),
        "broadcast_object": LinkFit(150e-6, 0.4e9)}


def _profile(tmp_path, shared=True, threads=2, cpus=2, world=3, fits=FITS, sync_wait=None, per_expert_s=None,
             ep_exchange=None, cold_op_s=None, sync_wait_a2a=None, rank_compute=None):
    """A profile as `modelchip calibrate --collectives` writes it (figures made up, structure real); sync_wait
    (fixed_s, per_compute) adds the measured wait at a collective reached from compute."""
    src = {"source": "test", "tag": "D"}
    data = {
        "id": "test-cpu", "name": "test CPU", "vendor": "measured", "kind": "cpu",
        "flops": {"bf16": {"value": 1e12, **src}, "fp32": {"value": 5e11, **src}},
        "memory": {"capacity": {"value": 64e9, **src}, "bandwidth": {"value": 40e9, **src}},
        "efficiency": {"gemm": 1.0, "memory": 0.8, "attention_memory": 0.5},
        "overhead": {"per_op_s": 5e-6, "per_seq_s": 2e-6, "per_step_s": 1e-4, "per_seq_step_s": 1e-5},
        "calibrated": {"threads": threads},
        "collectives": {"backend": "reference", "device": "cpu", "process_group": "gloo", "threads": threads,
                        "cpus": cpus,
                        "shared_device": shared,
                        "by_world_size": {str(world): {
                            "threads_per_rank": 1,
                            "raw": {name: {"bytes": SIZES, "seconds": [f.seconds(n) for n in SIZES]}
                                    for name, f in fits.items()},
                            "fit": {name: f.as_dict() for name, f in fits.items()}}}},
    }
    if per_expert_s is not None:
        data["overhead"]["per_expert_s"] = per_expert_s
    if cold_op_s is not None:
        data["overhead"]["cold_op_s"] = cold_op_s
    if sync_wait_a2a is not None:
        data["collectives"]["by_world_size"][str(world)]["sync_wait_all_to_all"] = {
            "fit": {"fixed_s": sync_wait_a2a[0], "per_compute": sync_wait_a2a[1]}}
    if ep_exchange is not None:
        data["collectives"]["by_world_size"][str(world)]["ep_exchange"] = {
            "tokens": list(ep_exchange), "seconds": list(ep_exchange.values())}
    if rank_compute is not None:  # {rows: (share, solo)}
        data["collectives"]["by_world_size"][str(world)]["rank_compute"] = {
            "rows": list(rank_compute), "share": [v[0] for v in rank_compute.values()],
            "solo": [v[1] for v in rank_compute.values()]}
    if sync_wait is not None:
        data["collectives"]["by_world_size"][str(world)]["sync_wait"] = {
            "fit": {"fixed_s": sync_wait[0], "per_compute": sync_wait[1]}}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return path


def test_profile_collectives_round_trip(tmp_path):
    data = json.loads(_profile(tmp_path).read_text())
    measured = read_collectives(data, 3)
    assert measured.fits == FITS and measured.world_size == 3 and measured.shared_device
    assert (measured.threads, measured.cpus) == (2, 2)
    # the stored fit is the fit of the stored raw sweep
    for name, raw in data["collectives"]["by_world_size"]["3"]["raw"].items():
        refit = fit_alpha_beta(raw["bytes"], raw["seconds"])
        assert refit.alpha_s == pytest.approx(FITS[name].alpha_s, rel=1e-9)
        assert refit.bandwidth == pytest.approx(FITS[name].bandwidth, rel=1e-9)
    unbounded = LinkFit(1e-5, math.inf)
    assert LinkFit(1e-5, unbounded.as_dict()["bandwidth_Bps"] or math.inf) == unbounded  # JSON has no inf


def test_missing_world_size_is_a_clear_error(tmp_path):
    path = _profile(tmp_path)
    with pytest.raises(ModelchipError, match="world size 3, not 2.*--world-size 2"):
        read_collectives(json.loads(path.read_text()), 2)
    with pytest.raises(ModelchipError, match="no measured collectives"):
        read_collectives({}, 2)


def test_ranks_sharing_cores():
    # the runtime gives each of 3 ranks 2 // 3 -> 1 thread: 3 threads on 2 cores, each rank a third of the device
    three = MeasuredCollectives(3, FITS, shared_device=True, threads=2, cpus=2)
    assert three.threads_per_rank() == 1 and three.oversubscription() == 1.5
    assert three.compute_share() == pytest.approx(1 / 3)
    two = MeasuredCollectives(2, FITS, shared_device=True, threads=2, cpus=2)
    assert two.compute_share() == 0.5 and two.oversubscription() == 1.0
    # profiled with 1 thread: each of 3 single-threaded ranks gets 2/3 of a core, so 2/3 of the profiled rate
    one = MeasuredCollectives(3, FITS, shared_device=True, threads=1, cpus=2)
    assert one.compute_share() == pytest.approx(2 / 3) and one.oversubscription() == 1.5
    # 8 threads on 8 cores split over 4 ranks: 2 each, no oversubscription, a quarter of the device each
    assert MeasuredCollectives(4, FITS, shared_device=True, threads=8, cpus=8).compute_share() == 0.25
    own_devices = MeasuredCollectives(4, FITS, shared_device=False, threads=8, cpus=8)
    assert own_devices.compute_share() == 1.0 and own_devices.oversubscription() == 1.0


def test_measured_rank_share_is_interpolated_in_log_rows():
    rates = ((1.0, 0.95, 1.0), (4.0, 0.9, 1.1), (16.0, 0.6, 1.3), (64.0, 0.5, 0.9))
    m = MeasuredCollectives(2, FITS, shared_device=True, threads=2, cpus=2, rank_rates=rates)
    assert m.compute_share(1) == 0.95 and m.compute_share(0.5) == 0.95  # the end values held beyond the ends
    assert m.compute_share(2) == pytest.approx(0.95 - 0.05 * 0.5, rel=1e-12)  # halfway from 1 to 4 in log rows
    assert m.compute_share(8) == pytest.approx(0.9 - 0.3 * 0.5, rel=1e-12)
    assert m.compute_share(1000) == 0.5
    assert m.solo_speedup(8) == pytest.approx(1.1 + 0.2 * 0.5, rel=1e-12)
    assert m.solo_speedup(64) == 1.0  # measured under 1: noise, a rank alone is not slower
    noisy = MeasuredCollectives(2, FITS, shared_device=True, threads=2, cpus=2, rank_rates=((1.0, 1.04, 1.0),))
    assert noisy.compute_share(1) == 1.0  # a rank on fewer threads is not faster than the profile's setting
    # not measured: threads over the profile's, and no solo speedup; own devices: the whole device
    assert MeasuredCollectives(2, FITS, shared_device=True, threads=2, cpus=2).compute_share(64) == 0.5
    assert MeasuredCollectives(2, FITS, shared_device=True, threads=2, cpus=2).solo_speedup(1) == 1.0
    own = MeasuredCollectives(2, FITS, shared_device=False, threads=2, cpus=2, rank_rates=rates)
    assert own.compute_share(64) == 1.0 and own.solo_speedup(16) == 1.0


def test_a_broken_rank_compute_section_is_a_clear_error(tmp_path):
    data = json.loads(_profile(tmp_path, rank_compute={1: (0.9, 1.0), 4: (-0.1, 1.0)}).read_text())
    with pytest.raises(ModelchipError, match="rank_compute at 4 rows has share -0.1"):
        read_collectives(data, 3)
    data = json.loads(_profile(tmp_path, rank_compute={1: (0.9, 1.0), 4: (0.8, 1.1)}).read_text())
    assert read_collectives(data, 3).rank_rates == ((1.0, 0.9, 1.0), (4.0, 0.8, 1.1))


def _smollm2():
    config = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
              "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": True}  # SmolLM2-135M's config.json
    return families.read(config, "smollm2-135m")


def test_tp_comm_term_from_profile_is_the_runtime_collectives_sum(tmp_path):
    # SmolLM2-135M at 3 ranks, 6 sequences (2 per rank) decoding at 200 tokens of context, bf16 activations
    precision = Precision(weight="bf16", kv="bf16", compute="bf16")
    d = apply_profile(Deployment(chip=get_chip("h100"), chips=3, strategy="tp", batch=2, context=200,
                                 precision=precision), _profile(tmp_path))
    p = evaluate(model_cost(_smollm2(), precision), d)
    ar = FITS["all_reduce"]
    ag = FITS["all_gather"]
    bc = FITS["broadcast_object"]
    ar_bytes = 6 * 576 * 2  # [T, H] in bf16
    ag_bytes = 6 * 16384 * 4  # each rank's float32 logits of ceil(49152 / 3) vocabulary rows
    bc_bytes = 8 * 6 * (5 + 13) + 2000  # int64 step inputs with a 13-block table, plus pickle's framing
    latency = (2 * 30 + 1) * ar.alpha_s + ag.alpha_s + bc.alpha_s
    transfer = (2 * 30 + 1) * ar_bytes / ar.bandwidth + ag_bytes / ag.bandwidth + bc_bytes / bc.bandwidth
    assert p.breakdown_ms["collective_latency"] == pytest.approx(latency * 1e3, rel=1e-12)
    assert p.breakdown_ms["communication"] == pytest.approx(transfer * 1e3, rel=1e-12)


def test_shared_device_ranks_compute_at_their_share(tmp_path):
    precision = Precision(weight="bf16", kv="bf16", compute="bf16")
    cost = model_cost(_smollm2(), precision)
    base = Deployment(chip=get_chip("h100"), chips=3, strategy="tp", batch=2, context=200, precision=precision)
    shared = evaluate(cost, apply_profile(base, _profile(tmp_path)))
    d = apply_profile(base, _profile(tmp_path, shared=False))
    own = evaluate(cost, d)
    for part in ("attention_proj", "attention_core", "lm_head", "dense_ffn", "norms"):
        assert shared.breakdown_ms[part] == pytest.approx(3 * own.breakdown_ms[part], rel=1e-12)
    assert shared.breakdown_ms["host_overhead"] == pytest.approx(1.5 * own.breakdown_ms["host_overhead"], rel=1e-12)
    assert shared.breakdown_ms["communication"] == own.breakdown_ms["communication"]
    with pytest.raises(ModelchipError, match="measured collectives are for 3 ranks"):
        evaluate(cost, replace(d, chips=2, batch=3))


def test_shared_device_ranks_compute_at_their_measured_share_for_their_rows(tmp_path):
    # SmolLM2 at 3 ranks, 2 sequences each: every rank's projections, norms and core run the instance's 6 tokens,
    # its LM head the 6 rows needing logits. Measured: 0.8 of the profiled rate at 4 rows, 0.4 at 16
    precision = Precision(weight="bf16", kv="bf16", compute="bf16")
    cost = model_cost(_smollm2(), precision)
    base = Deployment(chip=get_chip("h100"), chips=3, strategy="tp", batch=2, context=200, precision=precision)
    own = evaluate(cost, apply_profile(base, _profile(tmp_path, shared=False)))
    p = evaluate(cost, apply_profile(base, _profile(tmp_path, rank_compute={4: (0.8, 1.0), 16: (0.4, 1.0)})))
    share = 0.8 + (0.4 - 0.8) * math.log(6 / 4) / math.log(16 / 4)
    for part in ("attention_proj", "attention_core", "lm_head", "dense_ffn", "norms"):
        assert p.breakdown_ms[part] == pytest.approx(own.breakdown_ms[part] / share, rel=1e-12)


def test_tp_over_a_profile_without_collectives_says_how_to_measure(tmp_path):
    path = _profile(tmp_path)
    data = json.loads(path.read_text())
    del data["collectives"]
    path.write_text(json.dumps(data))
    d = Deployment(chip=get_chip("h100"), chips=3, strategy="tp", batch=1, context=64)
    with pytest.raises(ModelchipError, match="calibrate --collectives --world-size 3"):
        apply_profile(d, path)
    assert collectives.for_deployment("tp", 1, path) is None  # one rank needs no collectives


@pytest.mark.slow  # spawns a process group and sweeps every collective
def test_calibrate_collectives_only_adds_a_fitted_sweep(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("torch")
    path = _profile(tmp_path)
    before = json.loads(path.read_text())
    p = subprocess.run([sys.executable, "-m", "modelchip", "calibrate", "--collectives-only", "--world-size", "2",
                        "--out", str(path)], capture_output=True, text=True, timeout=1800)  # a hang guard
    assert p.returncode == 0, p.stderr
    data = json.loads(path.read_text())
    assert {k: v for k, v in data.items() if k != "collectives"} == \
        {k: v for k, v in before.items() if k != "collectives"}  # the rest of the profile is kept
    measured = data["collectives"]["by_world_size"]["2"]
    assert set(measured["raw"]) == set(collectives.COLLECTIVES) == set(measured["fit"])
    for name, raw in measured["raw"].items():
        assert raw["bytes"] == SIZES and all(t > 0 for t in raw["seconds"])
        ref_alpha, ref_g = _reference_fit(raw["bytes"], raw["seconds"])
        fit = read_collectives(data, 2).fit(name)
        if ref_alpha >= 0 and ref_g > 0:  # otherwise the fit clamps (test_fit_keeps_both_terms_non_negative)
            assert fit.alpha_s == pytest.approx(ref_alpha, rel=1e-6)
            assert 1 / fit.bandwidth == pytest.approx(ref_g, rel=1e-6)
    # the wait at an all-reduce reached from compute: one point per compute length, fitted as stored
    sync = measured["sync_wait"]
    assert len(sync["compute_s"]) == len(sync["wait_s"]) == len(sync["matmuls"]) == 3
    assert sync["compute_s"] == sorted(sync["compute_s"]) and all(w >= 0 for w in sync["wait_s"])
    refit = fit_sync_wait(sync["compute_s"], sync["wait_s"])
    assert (sync["fit"]["fixed_s"], sync["fit"]["per_compute"]) == (refit.fixed_s, refit.per_compute)
    # the runtime's expert-parallel dispatch and combine, timed at three token counts
    sync_a2a = measured["sync_wait_all_to_all"]
    assert sync_a2a["collective"] == "all_to_all" and len(sync_a2a["wait_s"]) == 3
    waits = dict(read_collectives(data, 2).sync_waits)
    refit_a2a = fit_sync_wait(sync_a2a["compute_s"], sync_a2a["wait_s"])
    assert (waits["all_to_all"].fixed_s, waits["all_to_all"].per_compute) == (refit_a2a.fixed_s, refit_a2a.per_compute)
    exchange = measured["ep_exchange"]
    assert exchange["tokens"] == [1, 4, 16] and all(t > 0 for t in exchange["seconds"])
    # a rank's compute rate against the profile's at four row counts: full threads alone, all ranks at once, and
    # alone on its own threads
    rank = measured["rank_compute"]
    assert rank["rows"] == [1, 4, 16, 64]
    assert all(t > 0 for key in ("full_s", "together_s", "alone_s") for t in rank[key])
    assert rank["share"] == [f / t for f, t in zip(rank["full_s"], rank["together_s"], strict=True)]
    assert rank["solo"] == [t / a for t, a in zip(rank["together_s"], rank["alone_s"], strict=True)]
    assert sync["passes"] == sync_a2a["passes"] == exchange["passes"] == rank["passes"] == 3  # once a sweep pass
    cast = measured["sync_wait_broadcast"]
    assert cast["collective"] == "broadcast" and cast["broadcast_bytes"] == 576 * 2 and cast["passes"] == 3
    cast_tail = max(0.0, cast["broadcast_s"] - read_collectives(data, 2).fit("send_recv").seconds(576 * 2))
    assert read_collectives(data, 2).tail_of("broadcast") == pytest.approx(cast_tail, rel=1e-12)
    assert cast["broadcast_issue_s"] > 0
    assert read_collectives(data, 2).broadcast_issue_s == cast["broadcast_issue_s"]
    # each measured its small collective's size, which its tail beyond the sweep's fit is taken at
    assert (sync["all_reduce_bytes"], sync_a2a["all_to_all_bytes"]) == (576 * 2, 2 * 576 * 2)
    tail = max(0.0, sync["all_reduce_s"] - read_collectives(data, 2).fit("all_reduce").seconds(576 * 2))
    assert read_collectives(data, 2).sync_wait.tail_s == pytest.approx(tail, rel=1e-12)
    # and the planner costs a 2-rank tensor-parallel step with them
    d = apply_profile(Deployment(chip=get_chip("h100"), chips=2, strategy="tp", batch=1, context=64), path)
    assert d.collectives.world_size == 2
    assert (d.collectives.sync_wait.fixed_s, d.collectives.sync_wait.per_compute) == (refit.fixed_s, refit.per_compute)
    assert d.collectives.ep_exchange == tuple(zip(map(float, exchange["tokens"]), exchange["seconds"], strict=True))
    assert d.collectives.rank_rates == tuple(zip(map(float, rank["rows"]), rank["share"], rank["solo"], strict=True))
    threads = data["collectives"]["threads"]
    assert d.collectives.threads_per_rank() == measured["threads_per_rank"] == max(1, threads // 2)


def test_short_measurements_keep_the_median_of_the_sweep_passes():
    pytest.importorskip("torch")
    from modelchip.calibrate import collectives as calibration

    # three passes of one sync-wait measurement and of the exchange; the second landed in a slow spell
    def sync(scale):
        return {"collective": "all_reduce", "matmuls": [1, 4, 16], "compute_s": [1e-4 * scale, 1e-3, 4e-3],
                "wait_s": [0.0, 2e-4 * scale, 6e-4 * scale], "all_reduce_s": 3e-4 * scale, "all_reduce_bytes": 1152}
    merged = calibration._median_sync([sync(1.0), sync(3.0), sync(1.2)])
    assert merged["compute_s"] == pytest.approx([1.2e-4, 1e-3, 4e-3])
    assert merged["wait_s"] == pytest.approx([0.0, 2.4e-4, 7.2e-4]) and merged["all_reduce_s"] == pytest.approx(3.6e-4)
    refit = fit_sync_wait(merged["compute_s"], merged["wait_s"])
    assert (merged["fit"]["fixed_s"], merged["fit"]["per_compute"]) == (refit.fixed_s, refit.per_compute)
    assert merged["all_reduce_bytes"] == 1152
    # a rank's compute: the median of each timing over the passes, the ratios taken from those medians
    ranks = [{"rows": [1, 64], "full_s": [f, 4 * f], "together_s": [f, 8 * f], "alone_s": [f, 6 * f]}
             for f in (1e-3, 3e-3, 1.5e-3)]
    merged_rank = calibration._median_rank(ranks)
    assert merged_rank["together_s"] == pytest.approx([1.5e-3, 12e-3])
    assert merged_rank["share"] == pytest.approx([1.0, 0.5]) and merged_rank["solo"] == pytest.approx([1.0, 4 / 3])
    runs = [{"tokens": [1, 4, 16], "seconds": s} for s in ([1e-3, 1.1e-3, 1.2e-3], [2.9e-3, 2.6e-3, 2.4e-3],
                                                           [0.9e-3, 1.0e-3, 1.3e-3])]
    assert calibration._median_exchange(runs)["seconds"] == pytest.approx([1e-3, 1.1e-3, 1.3e-3])


# a small MoE model (Qwen3-MoE naming): 2 layers, the first dense, the second 4 experts of top 2
TINY_MOE = {"model_type": "qwen3_moe", "vocab_size": 96, "hidden_size": 48, "num_hidden_layers": 2,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "intermediate_size": 64, "moe_intermediate_size": 24, "num_experts": 4,
            "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [0]}
FP32 = Precision(weight="fp32", kv="fp32", compute="fp32")


def _on_profile(tmp_path, d, **profile):
    return evaluate(model_cost(families.read(TINY_MOE, "tiny-moe"), FP32),
                    apply_profile(d, _profile(tmp_path, world=d.chips, **profile)))


def test_ep_comm_term_from_profile_is_the_runtime_collectives_sum(tmp_path):
    # EP 2, attention replicated: 4 sequences decoding at 64 tokens of context, float32 activations
    d = Deployment(chip=get_chip("h100"), chips=2, strategy="ep", batch=4, context=64, precision=FP32,
                   attention="replicated")
    p = _on_profile(tmp_path, d)
    a2a, ag, bc = FITS["all_to_all"], FITS["all_gather"], FITS["broadcast_object"]
    # one MoE layer: row counts (2 int64), rank 0's 2 tokens x top 2 rows of 48 floats out and back, their
    # expert ids (int64); the 2 tokens' results all-gathered; the step's inputs (4-block tables) broadcast
    a2a_bytes = 16 + 4 * 48 * 4 + 4 * 8 + 4 * 48 * 4
    bc_bytes = 8 * 4 * (5 + 4) + 2000
    assert p.breakdown_ms["collective_latency"] == pytest.approx(
        (4 * a2a.alpha_s + ag.alpha_s + bc.alpha_s) * 1e3, rel=1e-12)
    assert p.breakdown_ms["communication"] == pytest.approx(
        (a2a_bytes / a2a.bandwidth + 2 * 48 * 4 / ag.bandwidth + bc_bytes / bc.bandwidth) * 1e3, rel=1e-12)
    # data-parallel attention: rank 0 attends its own 2 sequences, dispatches their 4 rows, and all-gathers the
    # rows needing logits once (2 per rank) instead of the layer's chunks
    dp = _on_profile(tmp_path, replace(d, batch=2, attention="data-parallel"))
    assert dp.breakdown_ms["collective_latency"] == p.breakdown_ms["collective_latency"]
    assert dp.breakdown_ms["communication"] == pytest.approx(p.breakdown_ms["communication"], rel=1e-12)
    # ... and half the attention, but every row's logits (gathered to rank 0), and the same experts' work (with
    # attention replicated the ranks route one set of 4 tokens, not 4 each: 1/2 of the 8 expert rows each)
    assert dp.breakdown_ms["attention_core"] == pytest.approx(p.breakdown_ms["attention_core"] / 2, rel=1e-12)
    for part in ("lm_head", "moe"):
        assert dp.breakdown_ms[part] == pytest.approx(p.breakdown_ms[part], rel=1e-12)


def _afd_parts(p, cost, d):
    """(attention side without the LM head and sampling, LM head + sampling, FFN side) of a prediction, s."""
    ms = p.breakdown_ms
    head = (ms["lm_head"] + ms["sampling"]) / 1e3
    attention = (ms["attention_proj"] + ms["attention_core"] + ms["norms"]) / 1e3
    ffn = (ms["dense_ffn"] + ms["moe"] + ms["moe_imbalance"] + ms["router"] + ms["moe_expert_host"]
           + ms["act_fn"]) / 1e3
    return attention, head, ffn


def test_afd_step_from_profile_follows_the_runtime_schedule(tmp_path):
    # AFD 1 + 1, 4 sequences, float32. Per layer and micro-batch of n tokens: the attention rank's share of the
    # attention compute, 11 op calls (2 norms, 7 GQA ops, q and k norms) at 5 us each and 2 us per sequence;
    # the FFN rank's share of the FFN compute and its op calls (router, route, experts or gate_up, silu, down:
    # 3 each); a message of n x 48 floats each way at the send/recv fit
    cost = model_cost(families.read(TINY_MOE, "tiny-moe"), FP32)
    sr = FITS["send_recv"]
    bc = FITS["broadcast_object"]
    bc_bytes = 8 * 4 * (5 + 4) + 2000
    once_host = 4 * 5e-6 + 1e-4 + 4 * 1e-5  # embedding, final norm, LM head, sampling; per step; per sequence
    base = Deployment(chip=get_chip("h100"), chips=2, strategy="afd", attn_chips=1, ffn_chips=1, batch=4,
                      context=64, precision=FP32, attention="tensor-parallel")
    # one micro-batch: nothing overlaps, each layer is attention, wire, FFN, wire
    p = _on_profile(tmp_path, replace(base, microbatches=1))
    attention, head, ffn = _afd_parts(p, cost, base)
    a = attention / 2 + 11 * 5e-6 + 4 * 2e-6
    f = ffn / 2 + 3 * 5e-6
    wire = sr.seconds(4 * 48 * 4)
    once = bc.seconds(bc_bytes) + head + once_host
    assert p.tpot_ms == pytest.approx((2 * (a + wire + f + wire) + once) * 1e3, rel=1e-9)
    # rank 0 waits for each layer's round trip, and in the step broadcast
    assert p.breakdown_ms["communication"] == pytest.approx((2 * (wire + f + wire) + bc.seconds(bc_bytes)) * 1e3,
                                                            rel=1e-9)
    # two micro-batches on a fast wire: the FFN of one hides behind the attention of the other, so each layer
    # costs the attention rank's two micro-batches, and the step the last micro-batch's trip after them
    fast = dict(FITS, send_recv=LinkFit(1e-7, 1e12))
    p2 = _on_profile(tmp_path, replace(base, microbatches=2), fits=fast)
    attention, head, ffn = _afd_parts(p2, cost, base)
    # each micro-batch computes what a step of half the batch computes on each side (its weights read again)
    attention_half, _, ffn_half = _afd_parts(_on_profile(tmp_path, replace(base, batch=2, microbatches=1),
                                                         fits=fast), cost, base)
    assert attention_half > attention / 2 and ffn_half > ffn / 2  # this tiny step is bound by its weights
    a = attention_half / 2 + 11 * 5e-6 + 2 * 2e-6
    f = ffn_half / 2 + 3 * 5e-6
    wire = fast["send_recv"].seconds(2 * 48 * 4)
    assert a >= wire + f + wire  # the regime the closed form below holds in
    once = bc.seconds(bc_bytes) + head + once_host
    assert p2.tpot_ms == pytest.approx((2 * 2 * a + wire + f + wire + once) * 1e3, rel=1e-9)


def test_afd_sides_compute_at_their_solo_rate_while_the_other_waits(tmp_path):
    # AFD 1 + 1, one micro-batch: the sides take turns, so each computes at its measured solo rate (1.5 times the
    # rate with both computing, whose share of the profiled rate is measured at 0.75); host work and wires are
    # not sped up. The LM head and sampling run on rank 0 while the FFN rank waits
    base = Deployment(chip=get_chip("h100"), chips=2, strategy="afd", attn_chips=1, ffn_chips=1, batch=4,
                      context=64, precision=FP32, attention="tensor-parallel", microbatches=1)
    cost = model_cost(families.read(TINY_MOE, "tiny-moe"), FP32)
    p = _on_profile(tmp_path, base, rank_compute={1: (0.75, 1.5), 64: (0.75, 1.5)})
    attention, head, ffn = _afd_parts(p, cost, base)
    own = _on_profile(tmp_path, base, shared=False)
    own_attention, own_head, own_ffn = _afd_parts(own, cost, base)
    assert (attention, head, ffn) == (pytest.approx(own_attention / 0.75), pytest.approx(own_head / 0.75),
                                      pytest.approx(own_ffn / 0.75))
    sr, bc = FITS["send_recv"], FITS["broadcast_object"]
    a = attention / 2 / 1.5 + 11 * 5e-6 + 4 * 2e-6
    f = ffn / 2 / 1.5 + 3 * 5e-6
    wire = sr.seconds(4 * 48 * 4)
    once = bc.seconds(8 * 4 * (5 + 4) + 2000) + head / 1.5 + 4 * 5e-6 + 1e-4 + 4 * 1e-5
    assert p.tpot_ms == pytest.approx((2 * (a + wire + f + wire) + once) * 1e3, rel=1e-9)


def test_afd_messages_pay_the_broadcasts_measured_tail_and_issue(tmp_path):
    # AFD 1 + 1, one micro-batch: each layer's two messages are broadcasts, costed at the send/recv fit plus what a
    # broadcast took back to back beyond that fit (0.3 ms against 40 us + 1,152 B / 3 GB/s)
    base = Deployment(chip=get_chip("h100"), chips=2, strategy="afd", attn_chips=1, ffn_chips=1, batch=4,
                      context=64, precision=FP32, attention="tensor-parallel", microbatches=1)
    plain = _on_profile(tmp_path, base, sync_wait=(0.0, 0.0))
    path = _profile(tmp_path, world=2, sync_wait=(0.0, 0.0))
    data = json.loads(path.read_text())
    data["collectives"]["by_world_size"]["2"]["sync_wait_broadcast"] = {
        "collective": "broadcast", "broadcast_s": 3e-4, "broadcast_bytes": 1152,
        "fit": {"fixed_s": 0.0, "per_compute": 0.0}}
    path.write_text(json.dumps(data))
    p = evaluate(model_cost(families.read(TINY_MOE, "tiny-moe"), FP32), apply_profile(base, path))
    tail = 3e-4 - FITS["send_recv"].seconds(1152)
    layers = TINY_MOE["num_hidden_layers"]
    assert p.tpot_ms == pytest.approx(plain.tpot_ms + 2 * layers * tail * 1e3, rel=1e-9)
    # and starting each broadcast costs its rank 0.1 ms of host time: attention rank 0 starts two a layer (its send
    # and the receive of the FFN output), the FFN rank one (its send back); with one micro-batch nothing overlaps
    data["collectives"]["by_world_size"]["2"]["sync_wait_broadcast"]["broadcast_issue_s"] = 1e-4
    path.write_text(json.dumps(data))
    issued = evaluate(model_cost(families.read(TINY_MOE, "tiny-moe"), FP32), apply_profile(base, path))
    assert issued.tpot_ms == pytest.approx(p.tpot_ms + 3 * layers * 1e-4 * 1e3, rel=1e-9)


def test_sync_wait_fit_is_the_least_squares_line_kept_non_negative():
    compute, wait = [1e-4, 8e-4, 4e-3], [1.4e-4, 7.0e-4, 1.2e-3]
    slope, fixed = np.polyfit(np.asarray(compute), np.asarray(wait), 1)  # float64 reference
    f = fit_sync_wait(compute, wait)
    assert (f.fixed_s, f.per_compute) == (pytest.approx(fixed, rel=1e-9), pytest.approx(slope, rel=1e-9))
    falling = fit_sync_wait([1e-3, 2e-3], [3e-4, 1e-4])  # falling: the mean, no slope
    assert (falling.fixed_s, falling.per_compute) == (pytest.approx(2e-4), 0.0)
    assert fit_sync_wait([1e-3, 2e-3], [1e-4, 5e-4]).fixed_s == 0.0  # the line would cross below zero
    with pytest.raises(ModelchipError, match="at least two"):
        fit_sync_wait([1e-3], [1e-4])


def _compute_s(p) -> float:
    ms = p.breakdown_ms
    parts = ("attention_proj", "attention_core", "lm_head", "norms", "sampling", "dense_ffn", "moe", "moe_imbalance",
             "router", "moe_expert_host", "act_fn", "dp_attention_wait", "gemm_call_floor", "small_kernel_floor")
    return sum(ms[k] for k in parts) / 1e3


def test_tp_step_waits_at_each_collective_as_measured(tmp_path):
    # SmolLM2 at 3 ranks: 63 sync points a step (61 all-reduces, the logits' all-gather, the step broadcast);
    # each costs 0.1 ms + 0.25 x the compute since the last one
    precision = Precision(weight="bf16", kv="bf16", compute="bf16")
    d = Deployment(chip=get_chip("h100"), chips=3, strategy="tp", batch=2, context=200, precision=precision)
    cost = model_cost(_smollm2(), precision)
    without = evaluate(cost, apply_profile(d, _profile(tmp_path)))
    assert without.breakdown_ms["sync_wait"] == 0.0  # a profile from before the wait was measured
    p = evaluate(cost, apply_profile(d, _profile(tmp_path, sync_wait=(1e-4, 0.25))))
    wait = 63 * (1e-4 + 0.25 * _compute_s(p) / 63)
    assert p.breakdown_ms["sync_wait"] == pytest.approx(wait * 1e3, rel=1e-12)
    assert p.tpot_ms == pytest.approx(without.tpot_ms + wait * 1e3, rel=1e-12)


def test_collectives_pay_their_measured_tail_beyond_the_sweep(tmp_path):
    # the sync measurement timed its small all-reduce (1,152 bytes) back to back in step-long blocks at 0.5 ms a
    # call, where the sweep's fit gives 80 us + 1,152 B / 1.5 GB/s: each of the step's 63 sync points pays the
    # difference (the all-gather and the broadcast too: their kind has no measurement of its own)
    precision = Precision(weight="bf16", kv="bf16", compute="bf16")
    d = Deployment(chip=get_chip("h100"), chips=3, strategy="tp", batch=2, context=200, precision=precision)
    cost = model_cost(_smollm2(), precision)
    path = _profile(tmp_path, sync_wait=(1e-4, 0.25))
    without = evaluate(cost, apply_profile(d, path))
    assert without.breakdown_ms["collective_tail"] == 0.0  # a profile that did not store the closer's size
    data = json.loads(path.read_text())
    data["collectives"]["by_world_size"]["3"]["sync_wait"] |= {"collective": "all_reduce", "all_reduce_s": 5e-4,
                                                              "all_reduce_bytes": 1152}
    path.write_text(json.dumps(data))
    p = evaluate(cost, apply_profile(d, path))
    tail = 63 * (5e-4 - (80e-6 + 1152 / 1.5e9))
    assert p.breakdown_ms["collective_tail"] == pytest.approx(tail * 1e3, rel=1e-12)
    assert p.tpot_ms == pytest.approx(without.tpot_ms + tail * 1e3, rel=1e-12)
    # a block faster than the fit: no negative tail
    data["collectives"]["by_world_size"]["3"]["sync_wait"]["all_reduce_s"] = 5e-5
    path.write_text(json.dumps(data))
    assert evaluate(cost, apply_profile(d, path)).breakdown_ms["collective_tail"] == 0.0


def test_ep_exchange_carries_its_own_tail(tmp_path):
    # EP 2 with a measured exchange: the per-layer exchange is timed in step-long blocks itself, so only the
    # other calls (the step broadcast and the chunks' all-gathers) pay the all-to-all's and all-reduce's tails
    base = Deployment(chip=get_chip("h100"), chips=2, strategy="ep", batch=4, context=64, precision=FP32,
                      attention="replicated")
    path = _profile(tmp_path, world=2, sync_wait=(0.0, 0.0), sync_wait_a2a=(0.0, 0.0),
                    ep_exchange={1: 5e-4, 4: 6e-4, 16: 8e-4})
    data = json.loads(path.read_text())
    measured = data["collectives"]["by_world_size"]["2"]
    measured["sync_wait"] |= {"collective": "all_reduce", "all_reduce_s": 3e-4, "all_reduce_bytes": 1152}
    measured["sync_wait_all_to_all"] |= {"collective": "all_to_all", "all_to_all_s": 4e-4, "all_to_all_bytes": 2304}
    path.write_text(json.dumps(data))
    p = evaluate(model_cost(families.read(TINY_MOE, "tiny-moe"), FP32), apply_profile(base, path))
    tail_ar = 3e-4 - FITS["all_reduce"].seconds(1152)  # the all-gathers' and the broadcast's kind
    # one MoE layer (layer 0 is dense): the step broadcast and one all-gather of the chunks' results
    assert p.breakdown_ms["collective_tail"] == pytest.approx(2 * tail_ar * 1e3, rel=1e-12)


def test_afd_exchanges_pay_no_sync_wait(tmp_path):
    # AFD's exchanges are isend/irecv that the schedule itself waits on (deploy._afd_pipeline): a measured sync
    # wait changes nothing there
    base = Deployment(chip=get_chip("h100"), chips=2, strategy="afd", attn_chips=1, ffn_chips=1, batch=4,
                      context=64, precision=FP32, attention="tensor-parallel", microbatches=2)
    assert _on_profile(tmp_path, base, sync_wait=(1e-4, 0.25)).tpot_ms == _on_profile(tmp_path, base).tpot_ms


def test_moe_expert_host_cost_is_per_expert_the_batch_touches(tmp_path):
    # a backend that loops over the experts it runs pays 20 us per expert (calibrate's moe_expert_overhead). The
    # tiny MoE has 1 MoE layer of 4 experts, top 2. EP 2, attention replicated, 4 sequences: the group routes
    # 4 tokens; an expert is missed by all of them with probability (1 - 2/4)^4 = 1/16, so 4 x 15/16 experts
    # run, half of them on each rank
    d = Deployment(chip=get_chip("h100"), chips=2, strategy="ep", batch=4, context=64, precision=FP32,
                   attention="replicated")
    without = _on_profile(tmp_path, d)
    p = _on_profile(tmp_path, d, per_expert_s=20e-6)
    assert without.breakdown_ms["moe_expert_host"] == 0.0
    assert p.breakdown_ms["moe_expert_host"] == pytest.approx(20e-3 * 4 * 15 / 16 / 2, rel=1e-12)
    assert p.tpot_ms == pytest.approx(without.tpot_ms + p.breakdown_ms["moe_expert_host"], rel=1e-12)
    # one process, one sequence: both of its 2 experts run there
    one = _on_profile(tmp_path, replace(d, chips=1, strategy="tp", batch=1, attention=""), per_expert_s=20e-6)
    assert one.breakdown_ms["moe_expert_host"] == pytest.approx(20e-3 * 2, rel=1e-12)
    # AFD 1 + 1 with 2 micro-batches of 2 tokens: each runs 4 x (1 - (1/2)^2) = 3 experts on the FFN rank
    afd = Deployment(chip=get_chip("h100"), chips=2, strategy="afd", attn_chips=1, ffn_chips=1, batch=4,
                     context=64, precision=FP32, attention="tensor-parallel", microbatches=2)
    a = _on_profile(tmp_path, afd, per_expert_s=20e-6)
    assert a.breakdown_ms["moe_expert_host"] == pytest.approx(20e-3 * 2 * 3, rel=1e-12)


def test_ep_step_costs_the_measured_exchange_per_moe_layer(tmp_path):
    # the profile timed the runtime's dispatch and combine: 1, 2 and 5 ms a layer at 1, 4 and 16 tokens per rank.
    # EP 2 replicated, 4 sequences: rank 0 dispatches its chunk of 2 tokens, 1 + (2 - 1) x (2 - 1) / (4 - 1) ms
    # for the one MoE layer, in place of its four all-to-alls; the broadcast and the chunks' all-gather keep
    # their fits; sync points: those two and the exchange
    exchange = {1: 1e-3, 4: 2e-3, 16: 5e-3}
    d = Deployment(chip=get_chip("h100"), chips=2, strategy="ep", batch=4, context=64, precision=FP32,
                   attention="replicated")
    p = _on_profile(tmp_path, d, ep_exchange=exchange, sync_wait=(1e-4, 0.0))
    ag, bc = FITS["all_gather"], FITS["broadcast_object"]
    bc_bytes = 8 * 4 * (5 + 4) + 2000
    assert p.breakdown_ms["collective_latency"] == pytest.approx(
        (1e-3 + 1e-3 / 3 + ag.alpha_s + bc.alpha_s) * 1e3, rel=1e-12)
    assert p.breakdown_ms["communication"] == pytest.approx(
        (2 * 48 * 4 / ag.bandwidth + bc_bytes / bc.bandwidth) * 1e3, rel=1e-12)
    assert p.breakdown_ms["sync_wait"] == pytest.approx(3 * 1e-4 * 1e3, rel=1e-12)
    # an all-to-all measured to wait 1 ms + the compute since the last sync point: the exchange waits that, the
    # broadcast and the all-gather the all-reduce's 0.1 ms (3 sync points share the step's compute)
    a = _on_profile(tmp_path, d, ep_exchange=exchange, sync_wait=(1e-4, 0.0), sync_wait_a2a=(1e-3, 1.0))
    compute = (a.tpot_ms - sum(a.breakdown_ms[k] for k in ("communication", "collective_latency", "sync_wait",
                                                           "host_overhead", "launch", "kernel_floor"))) / 1e3
    assert a.breakdown_ms["sync_wait"] == pytest.approx((2 * 1e-4 + 1e-3 + compute / 3) * 1e3, rel=1e-9)
    # 32 sequences: 16 tokens each rank, 5 ms; 64: 32 tokens, along the last two counts' slope, 5 + 16 x 0.25 ms
    for batch, seconds in ((32, 5e-3), (64, 9e-3)):
        q = _on_profile(tmp_path, replace(d, batch=batch), ep_exchange=exchange)
        rest = q.breakdown_ms["collective_latency"] - (ag.alpha_s + bc.alpha_s) * 1e3
        assert rest == pytest.approx(seconds * 1e3, rel=1e-12)


def test_small_ops_pay_the_measured_cold_cost_per_call(tmp_path):
    # a calibration measured a small op 10 us slower after 1 MB streamed since its last call, 100 us after
    # 100 MB. The tiny MoE streams about 0.1 MB a layer, below the first point: every small op call pays 10 us, and
    # with a per-expert loop measured, so does each expert run (one MoE layer of 4 experts, top 2; EP 2 replicated,
    # 4 tokens: 4 x 15/16 experts, half on each rank)
    cold = [[1e6, 1e-5], [1e8, 1e-4]]
    d = Deployment(chip=get_chip("h100"), chips=2, strategy="ep", batch=4, context=64, precision=FP32,
                   attention="replicated")
    cost = model_cost(families.read(TINY_MOE, "tiny-moe"), FP32)
    without = _on_profile(tmp_path, d)
    p = _on_profile(tmp_path, d, cold_op_s=cold)
    assert without.breakdown_ms["cold_op_host"] == 0.0
    assert p.breakdown_ms["cold_op_host"] == pytest.approx(1e-2 * cost.small_op_calls, rel=1e-12)
    e = _on_profile(tmp_path, d, cold_op_s=cold, per_expert_s=2e-5)
    assert e.breakdown_ms["cold_op_host"] == pytest.approx(1e-2 * (cost.small_op_calls + 4 * 15 / 16 / 2), rel=1e-12)
