"""The deployment planner: strategies, memory feasibility, SLO search, Pareto frontier, errors, CLI contract."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from modelchip.cli.main import main
from modelchip.cost import serving, validation
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, best_batch_for_slo, evaluate, max_batch_by_memory
from modelchip.cost.model_cost import model_cost
from modelchip.cost.planner import BATCHES, Candidate, pareto_frontier, plan
from modelchip.cost.systems import system_for
from modelchip.errors import ModelchipError
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip
from modelchip.spec.kernels import kernel_catalog

PREC = Precision(weight="fp8", kv="bf16")


def _dsv3():
    return model_cost(load_model("deepseek-v3"), PREC)


def _d(chip="h800", **kw):
    c = get_chip(chip)
    base = dict(chip=c, chips=128, strategy="ep", batch=64, context=4096, precision=PREC, system=system_for(c))
    return Deployment(**{**base, **kw})


def test_copies_of_a_configuration_share_only_its_batch_independent_terms():
    # Deployment.but copies that change the batch reuse the terms costed once for the configuration; a copy that
    # changes anything else costs afresh: each equals the same deployment built from scratch (no shared memo)
    cost = _dsv3()
    for base in (_d(chips=64), _d(chips=64, strategy="afd", attn_chips=48, ffn_chips=16), _d(chips=8, strategy="tp")):
        for b in (1, 7, 64):
            assert evaluate(cost, base.but(batch=b)) == evaluate(cost, replace(base, batch=b))
        other = base.but(batch=2).but(chips=32, attn_chips=base.attn_chips // 2, ffn_chips=base.ffn_chips // 2)
        assert evaluate(cost, other) == evaluate(cost, replace(other))
        fp8 = base.but(batch=3).but(precision=Precision(weight="fp8", kv="fp8"))
        assert evaluate(model_cost(load_model("deepseek-v3"), fp8.precision), fp8) == evaluate(
            model_cost(load_model("deepseek-v3"), fp8.precision), replace(fp8))
        assert "_shared" not in replace(base.but(batch=2)).__dict__


def test_ep_communication_follows_the_network():
    # the same EP group inside one NVL72 scale-up domain moves its all-to-all over NVLink, not NICs
    gb = get_chip("gb200")
    nvl = evaluate(_dsv3(), _d("gb200", chips=64, system=system_for(gb)))
    ib = evaluate(_dsv3(), _d(chips=64))
    assert nvl.breakdown_ms["communication"] < ib.breakdown_ms["communication"] / 10


def test_ep_all_to_all_matches_deepseeks_arithmetic():
    # DeepSeek ISCA'25: (1 B + 2 B) x tokens x experts x 7K / bandwidth per layer; 8 routed experts, 40 GB/s.
    # The bandwidth path is what a chip without a dispatch/combine benchmark takes: leave the benchmarks out
    p = evaluate(_dsv3(), _d(batch=32, exclude=frozenset({"deepep", "pplx-kernels"})))
    per_layer = 3 * 32 * 8 * 7168 / 40e9
    assert p.breakdown_ms["communication"] == pytest.approx(58 * per_layer * 1e3, rel=1e-6)


def test_tp_all_reduce_and_sharding():
    cost = model_cost(load_model("llama-3.1-70b"), PREC)
    tp1 = evaluate(cost, _d("h100", chips=1, strategy="tp", batch=8))
    tp4 = evaluate(cost, _d("h100", chips=4, strategy="tp", batch=8))
    assert tp1.breakdown_ms["communication"] == 0 and tp4.breakdown_ms["communication"] > 0
    assert tp4.memory_gb["weights"] == pytest.approx(tp1.memory_gb["weights"] / 4)


def test_afd_pipeline_costs_the_slowest_stage():
    cost = model_cost(load_model("step3"), Precision(weight="fp8", kv="fp8"))
    p = evaluate(cost, _d(chips=24, strategy="afd", attn_chips=16, ffn_chips=8, batch=64))
    b = p.breakdown_ms
    attn = b["attention_proj"] + b["attention_core"] + b["lm_head"] + b["norms"] + b["sampling"]
    ffn = b["dense_ffn"] + b["moe"] + b["router"] + b["act_fn"]
    assert p.tpot_ms >= max(attn, ffn, b["communication"])
    # the micro-batches overlap the sides: less than all of the work one after another (each micro-batch's
    # second read of its side's weights included)
    assert p.tpot_ms < attn + ffn + b["communication"] + b["afd_micro_batch_rereads"]
    assert set(p.memory_gb) >= {"attention_chip", "ffn_chip"}


def test_afd_micro_batches_each_stream_their_weights():
    # Llama-3.1-70B decode on 1 attention + 1 FFN H100 at 2 sequences: every FFN matmul is bound by streaming its
    # weights, so 2 micro-batches of 1 sequence read the FFN weights twice; the step's FFN side is then twice
    # the FFN time of one sequence, and the extra shows as afd_micro_batch_rereads (leave the kernel tables out
    # so the FFN is one roofline: bytes / (bandwidth x the scalar weight-streaming efficiency))
    cost = model_cost(load_model("llama-3.1-70b"), PREC)
    cat = kernel_catalog()
    every = frozenset(t.source_id for group in (cat.gemm, cat.attention, cat.fixed, cat.attention_layer,
                                                cat.fused_moe, cat.collective) for t in group)
    kw = dict(chips=2, strategy="afd", attn_chips=1, ffn_chips=1, context=1024, exclude=every)
    one = evaluate(cost, _d("h100", batch=2, microbatches=1, **kw))
    two = evaluate(cost, _d("h100", batch=2, microbatches=2, **kw))
    single = evaluate(cost, _d("h100", batch=1, microbatches=1, **kw))
    ffn_bytes = cost.dense_params * 1.0  # FP8 weights, one byte each
    h100, eff = get_chip("h100"), one.breakdown_ms
    streaming = ffn_bytes / (h100.bandwidth * Deployment(chip=h100, chips=1, strategy="tp", batch=1,
                                                          context=1).efficiency.weight_memory(1)) * 1e3
    assert eff["dense_ffn"] == pytest.approx(streaming, rel=1e-9)  # memory-bound: the same at 1 and 2 rows
    assert single.breakdown_ms["dense_ffn"] == pytest.approx(streaming, rel=1e-9)
    assert one.breakdown_ms["afd_micro_batch_rereads"] == 0
    # two micro-batches: the FFN weights streamed once more, and the attention side's own weights once more
    rereads = two.breakdown_ms["afd_micro_batch_rereads"]
    assert rereads >= streaming and two.tpot_ms > one.tpot_ms


def test_mtp_helps_where_a_step_is_bound_by_memory_not_by_token_count():
    # small batch on a dense model: reading weights and cache dominates and serves the draft token for free
    llama = model_cost(load_model("llama-3.1-70b"), PREC)
    kw = dict(chips=8, strategy="tp", batch=4, context=8192)
    base = evaluate(llama, _d("h100", **kw))
    mtp = evaluate(llama, _d("h100", **kw, mtp=1, mtp_acceptance=0.8))
    assert mtp.tokens_per_s_per_chip > 1.4 * base.tokens_per_s_per_chip
    assert mtp.tpot_ms < base.tpot_ms / 1.4
    # where every token costs network time (EP, comm-bound), drafts buy little
    comm = dict(redundant_experts=32, chips=144, batch=128)
    # (DeepEP's measured dispatch has a fixed part, so the second token per sequence is not quite full price)
    assert evaluate(_dsv3(), _d(**comm, mtp=1, mtp_acceptance=0.8)).tokens_per_s_per_chip < \
        1.2 * evaluate(_dsv3(), _d(**comm)).tokens_per_s_per_chip


def test_out_of_memory_is_reported_not_estimated():
    p = evaluate(_dsv3(), _d(chips=8, strategy="tp", batch=1))
    assert not p.feasible and "out of memory" in p.reason and p.tpot_ms is None
    assert p.memory_gb_per_chip > 80


def test_slo_search_picks_the_largest_batch_that_meets_it():
    d = _d()
    p = best_batch_for_slo(_dsv3(), d, 40.0)
    assert p.feasible and p.tpot_ms <= 40.0
    assert evaluate(_dsv3(), replace(d, batch=p.batch_per_chip + 1)).tpot_ms > 40.0
    assert p.batch_per_chip <= max_batch_by_memory(_dsv3(), d)


@pytest.mark.parametrize("kw,message", [
    (dict(strategy="xp"), "unknown strategy"),
    (dict(chips=100), "does not divide the 256"),
    (dict(strategy="afd", chips=16, attn_chips=200, ffn_chips=8), "must equal --num-chips"),
    (dict(strategy="afd"), "afd needs"),
    (dict(mtp=1, mtp_acceptance=1.5), "mtp"),
])
def test_impossible_inputs(kw, message):
    with pytest.raises(ModelchipError, match=message):
        evaluate(_dsv3(), _d(**kw))


def test_pareto_frontier():
    def c(t, x):
        return Candidate("bf16", "h800", 8, "ep", 0, 0, 1, t, None, x, None, 1, {})

    front = pareto_frontier([c(10, 100), c(20, 90), c(30, 300), c(15, 200), c(40, 250)])
    assert [(p.tpot_ms, p.tokens_per_s_per_chip) for p in front] == [(10, 100), (15, 200), (30, 300)]


def test_plan_rejects_with_reasons():
    base = [_d(chips=n, strategy=s) for n in (8, 32, 128) for s in ("tp", "ep")]
    res = plan(_dsv3(), base, tpot_slo_ms=50)
    assert res.best is not None and res.best.tpot_ms <= 50
    assert set(res.rejected) >= {"memory", "tpot"}
    assert "out of memory" in res.examples["memory"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "modelchip", *args], capture_output=True, text=True,
                          timeout=1800)  # hang guard, not a speed check


def test_predict_json_contract():
    p = run("predict", "--model", "deepseek-v3", "--chip", "h800", "--num-chips", "144", "--strategy", "ep",
            "--redundant-experts", "32", "--tpot-slo-ms", "50", "--context", "4096", "--mtp", "1",
            "--mtp-acceptance", "0.85", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    for key in ("feasible", "tpot_ms", "batch_per_chip", "tokens_per_s_per_chip", "memory_gb_per_chip",
                "breakdown_ms"):
        assert key in out
    assert out["feasible"] and out["tpot_ms"] <= 50
    pre = json.loads(run("predict", "--model", "deepseek-v3", "--chip", "h800", "--num-chips", "32", "--strategy",
                         "ep", "--batch", "4", "--phase", "prefill", "--prompt-len", "4096", "--json").stdout)
    assert pre["ttft_ms"] > 0


@pytest.mark.parametrize("args,message", [
    (["--strategy", "zz", "--num-chips", "8", "--batch", "1"], "unknown strategy"),
    (["--strategy", "afd", "--num-chips", "8", "--attn-chips", "12", "--ffn-chips", "2", "--batch", "1"],
     "more attention"),
    (["--strategy", "ep", "--num-chips", "12", "--batch", "1"], "does not divide"),
])
def test_predict_errors(args, message, capsys):
    assert main(["predict", "--model", "deepseek-v3", "--chip", "h800", *args]) == 2
    assert message in capsys.readouterr().err


def test_plan_cli(tmp_path):
    out = tmp_path / "plan.html"
    p = run("plan", "--model", "step3", "--chip", "h800", "h20", "--counts", "8", "16", "32", "--kv-dtype", "fp8",
            "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["best"] and res["pareto"] and res["evaluated"] > 100
    assert "<svg" in out.read_text()


def test_validation_table_is_published_and_current():
    res = validation.run()
    assert res["count"] >= 15
    doc = (Path(__file__).parent.parent / "docs" / "validation.md").read_text()
    assert validation.markdown(res) in doc, "docs/validation.md is stale: run modelchip validate --write"


def test_kernels_between_matmuls_follow_their_byte_counts():
    # hand arithmetic for Llama-3.1-8B (H 4096, I 14336, 32 layers, vocab 128256) on H100 at 84.1% of 3.35 TB/s
    # (the memory-bound operator efficiency of CloudMatrix's Table 8)
    cost = model_cost(load_model("llama-3.1-8b"), PREC)
    bw = 3.35e12 * 0.841
    tp1 = evaluate(cost, _d("h100", chips=1, strategy="tp", batch=256, context=1024)).breakdown_ms
    assert tp1["norms"] == pytest.approx(256 * 32 * 8 * 4096 * 2 / bw * 1e3)
    assert tp1["act_fn"] == pytest.approx(256 * 32 * 3 * 14336 * 2 / bw * 1e3)
    assert tp1["sampling"] == pytest.approx(256 * 128256 * 3 * 4 / bw * 1e3)
    # TP shards the FFN width and the vocabulary, not the normalised hidden states (every rank holds them all)
    tp4 = evaluate(cost, _d("h100", chips=4, strategy="tp", batch=64, context=1024)).breakdown_ms
    assert tp4["norms"] == pytest.approx(tp1["norms"])
    assert tp4["act_fn"] == pytest.approx(tp1["act_fn"] / 4)
    assert tp4["sampling"] == pytest.approx(tp1["sampling"] / 4)


def test_plan_searches_serving_loads():
    cost = model_cost(load_model("llama-3.1-70b"), PREC)
    base = [_d("h200", chips=n, strategy="tp", batch=1) for n in (1, 2, 4)]
    res = plan(cost, base, tpot_slo_ms=40, ttft_slo_ms=2000, serve=(1024, 512))
    assert res.best and res.evaluated > 20
    for c in res.feasible:
        assert c.tpot_ms <= 40 and c.ttft_ms <= 2000
    # the best candidate is exactly the serving prediction at its load
    best = res.best
    d = next(x for x in base if x.chips == best.chips)
    s = serving.serve(cost, d, 1024, 512, concurrency=best.batch * best.chips)
    assert best.tokens_per_s_per_chip == pytest.approx(s.output_tokens_per_s_per_chip)
    assert best.tpot_ms == pytest.approx(s.tpot_ms)
    # a load one step up the batch grid misses the TPOT target or does not fit
    higher = [b for b in BATCHES if b > best.batch]
    if higher:
        try:
            up = serving.serve(cost, d, 1024, 512, concurrency=higher[0] * best.chips)
            assert up.tpot_ms > 40 or up.output_tokens_per_s_per_chip <= best.tokens_per_s_per_chip
        except ModelchipError:
            pass


def test_serve_under_slo_is_the_highest_load_within_the_bounds():
    # MLPerf's Server and Interactive scenarios: the highest load whose TPOT and TTFT stay within the bounds
    cost = model_cost(load_model("llama-3.1-70b"), PREC)
    d = _d("h200", chips=1, strategy="tp", batch=1)
    s = serving.serve_under_slo(cost, d, 300, 300, tpot_ms=40, ttft_ms=450)
    assert s.feasible and s.tpot_ms <= 40 and s.ttft_ms <= 450
    # it is the serving prediction at its own load, and 1% more load breaks the TPOT bound
    again = serving.serve(cost, d, 300, 300, concurrency=s.concurrency)
    assert again.output_tokens_per_s == pytest.approx(s.output_tokens_per_s)
    assert serving.serve(cost, d, 300, 300, concurrency=s.concurrency * 1.01).tpot_ms > 40
    # a bound no load reaches gives the memory-limited maximum load, as with no bound
    loose = serving.serve_under_slo(cost, d, 300, 300, tpot_ms=1e6)
    assert loose.output_tokens_per_s == pytest.approx(serving.serve(cost, d, 300, 300).output_tokens_per_s)
    # one request already too slow: infeasible, with the reason
    tight = serving.serve_under_slo(cost, d, 300, 300, tpot_ms=0.5)
    assert not tight.feasible and "TPOT" in tight.reason
    with pytest.raises(ModelchipError):
        serving.serve_under_slo(cost, d, 300, 300, tpot_ms=0)


def test_deployment_but_equals_dataclasses_replace():
    # the planner's fast copy must give the same deployment replace gives, and refuse a misspelt field as it does
    d = Deployment(chip=get_chip("h100"), chips=8, strategy="afd", batch=4, context=1024, attn_chips=2, ffn_chips=6)
    for changes in ({"batch": 8}, {"batch": 0.5, "microbatches": 1}, {"mtp": 0, "mtp_acceptance": 0.0}):
        assert d.but(**changes) == replace(d, **changes)
    assert d.batch == 4  # the original is untouched
    with pytest.raises(TypeError, match="btch"):
        d.but(btch=3)
