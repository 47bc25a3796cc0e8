"""Chips common in published benchmarks (AMD MI355X/MI350X, NVIDIA B300/GB300, L40S, L4, H100 PCIe/NVL,
Intel Gaudi 2/3): datasheet figures by hand arithmetic, architectures, systems, listings and predictions."""

import pytest

from modelchip.cli.main import main
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.cost.systems import system_for
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip

NEW_CHIPS = ("mi355x", "mi350x", "b300", "gb300", "l40s", "l4", "h100-nvl", "h100-pcie", "gaudi3", "gaudi2")


@pytest.mark.parametrize("cid,arch", [
    ("mi355x", "cdna4"), ("mi350x", "cdna4"), ("b300", "blackwell"), ("gb300", "blackwell"), ("l40s", "ada"),
    ("l4", "ada"), ("h100-nvl", "hopper"), ("h100-pcie", "hopper"), ("gaudi3", "gaudi3"), ("gaudi2", "gaudi2"),
])
def test_architecture_decides_which_measured_kernels_apply(cid, arch):
    chip = get_chip(cid)
    assert chip.arch == arch
    assert chip.peak("bf16") and chip.peak("fp8") and chip.memory_capacity and chip.bandwidth
    assert chip.scale_up.bandwidth is not None


def test_blackwell_ultra_shares_b200_kernels_and_cdna4_does_not_share_mi300x():
    assert get_chip("b300").arch == get_chip("b200").arch == get_chip("gb300").arch
    assert get_chip("mi355x").arch != get_chip("mi300x").arch


def test_datasheet_arithmetic():
    # AMD CDNA 4: 256 CUs x 2.4 GHz (MI355X) / 2.2 GHz (MI350X) x 4096 dense BF16 FLOP per clock per CU,
    # which AMD rounds to 2.5 and 2.3 PFLOPS; FP8 doubles it and MXFP4 doubles it again
    for cid, ghz, rounded in (("mi355x", 2.4, 2.5e15), ("mi350x", 2.2, 2.3e15)):
        chip = get_chip(cid)
        assert chip.peak("bf16") == pytest.approx(256 * ghz * 1e9 * 4096, rel=1e-4)
        assert chip.peak("bf16") == pytest.approx(rounded, rel=0.01)
        assert chip.peak("fp8") == pytest.approx(2 * chip.peak("bf16"), rel=1e-4)
        assert chip.peak("fp4") == pytest.approx(4 * chip.peak("bf16"), rel=1e-4)
    # 7 Infinity Fabric links x 153.6 GB/s, stored per direction as half (mi300x's convention: 7 x 128 / 2)
    assert get_chip("mi355x").scale_up.bandwidth.value == pytest.approx(7 * 153.6e9 / 2)
    assert get_chip("mi300x").scale_up.bandwidth.value == pytest.approx(7 * 128e9 / 2)
    # sparse-only datasheets are stored dense: L4 242 / 485 TFLOPS with sparsity, H100 NVL 1671 / 3341
    assert get_chip("l4").peak("bf16") == pytest.approx(242e12 / 2)
    assert get_chip("l4").peak("fp8") == pytest.approx(485e12 / 2)
    assert get_chip("h100-nvl").peak("bf16") == pytest.approx(1671e12 / 2)
    assert get_chip("h100-pcie").peak("fp8") == pytest.approx(3026e12 / 2)
    # L40S lists dense and sparse: 362.05 | 733 BF16, 733 | 1466 FP8
    assert get_chip("l40s").peak("bf16") == pytest.approx(362.05e12)
    assert get_chip("l40s").peak("fp8") == pytest.approx(733e12)
    # B300: 18 PFLOPS FP4 sparse | 14 dense; GB300 NVL72: 1080 PFLOPS dense FP4 over 72 GPUs
    assert get_chip("b300").peak("fp4") == pytest.approx(14e15)
    assert get_chip("gb300").peak("fp4") == pytest.approx(1080e15 / 72)
    # Blackwell Ultra cuts INT8 to a few percent of FP8 (307 TOPS sparse on B300)
    assert get_chip("b300").peak("int8") == pytest.approx(307e12 / 2)
    assert get_chip("b300").peak("int8") < 0.05 * get_chip("b300").peak("fp8")
    # Gaudi: 21 scale-up ports and 3 scale-out ports, 200 Gb/s (Gaudi 3) or 100 Gb/s (Gaudi 2), per direction
    assert get_chip("gaudi3").scale_up.bandwidth.value == pytest.approx(21 * 200e9 / 8)
    assert get_chip("gaudi3").scale_out.bandwidth.value == pytest.approx(3 * 200e9 / 8)
    assert get_chip("gaudi2").scale_up.bandwidth.value == pytest.approx(21 * 100e9 / 8)
    # PCIe cards: x16 Gen4 is 64 GB/s both ways, Gen5 128
    assert get_chip("l40s").scale_up.bandwidth.value == pytest.approx(64e9 / 2)
    assert get_chip("h100-nvl").scale_up.bandwidth.value == pytest.approx(128e9 / 2)
    # nvidia-smi totals in MiB
    assert get_chip("b300").memory_capacity.value == 275040 * 2**20
    assert get_chip("gb300").memory_capacity.value == 284208 * 2**20
    assert get_chip("l40s").memory_capacity.value == 46068 * 2**20


def test_gb300_is_deployed_in_its_72_gpu_nvlink_domain():
    system = system_for(get_chip("gb300"))
    assert system.id == "gb300-nvl72" and system.scale_up_domain == 72
    # the rack totals NVIDIA publishes are the per-GPU figures times 72
    assert system.totals["fp4_flops"].value == pytest.approx(72 * get_chip("gb300").peak("fp4"))
    assert system.totals["memory_bandwidth"].value == pytest.approx(72 * get_chip("gb300").bandwidth)


@pytest.mark.parametrize("cid", NEW_CHIPS)
def test_listing_shows_every_figure_with_its_source(cid, capsys):
    assert main(["chips", cid]) == 0
    out = capsys.readouterr().out
    for name, fig in get_chip(cid).figures().items():
        assert name in out
        assert fig.source[:60] in out, f"{cid} {name}: source not shown"
        assert fig.source.count("http") >= 1


WEIGHTS_8B = 8.03e9  # Llama-3.1-8B: 8.03B parameters, one byte each in FP8 (model card)


@pytest.mark.parametrize("cid", NEW_CHIPS)
@pytest.mark.parametrize("batch", [1, 64])
def test_llama_8b_decode_predicts_on_every_new_chip(cid, batch):
    chip = get_chip(cid)
    cost = model_cost(load_model("llama-3.1-8b"), Precision(weight="fp8", kv="bf16"))
    d = Deployment(chip=chip, chips=1, strategy="tp", batch=batch, context=1024,
                   precision=Precision(weight="fp8", kv="bf16"), system=system_for(chip))
    p = evaluate(cost, d)
    assert p.feasible, p.reason
    # a decode step reads every weight once: no faster than the weights over the HBM/GDDR bandwidth
    assert p.tpot_ms >= WEIGHTS_8B / chip.bandwidth * 1e3
    assert p.tokens_per_s_per_chip == pytest.approx(batch / p.tpot_ms * 1e3, rel=0.01)


def test_l4_runs_out_of_memory_where_hand_arithmetic_says():
    # 64 sequences of 2048 tokens: 64 x 2048 x (32 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes) = 17.2 GB of
    # KV cache on top of 8.0 GB of FP8 weights: more than a 24 GB L4, not more than a 48 GB L40S
    kv = 64 * 2048 * 32 * 8 * 128 * 2 * 2
    assert WEIGHTS_8B + kv > get_chip("l4").memory_capacity.value
    assert WEIGHTS_8B + kv < 0.8 * get_chip("l40s").memory_capacity.value
    cost = model_cost(load_model("llama-3.1-8b"), Precision(weight="fp8", kv="bf16"))
    for cid, fits in (("l4", False), ("l40s", True)):
        chip = get_chip(cid)
        p = evaluate(cost, Deployment(chip=chip, chips=1, strategy="tp", batch=64, context=2048,
                                      precision=Precision(weight="fp8", kv="bf16")))
        assert p.feasible is fits, p.reason
        if not fits:
            assert "out of memory" in p.reason


def test_multi_chip_on_new_platforms():
    # TP8 inside one 8-chip box (no system file needed: 8 chips per scale-up domain is the default)
    cost = model_cost(load_model("llama-3.1-70b"), Precision(weight="fp8", kv="bf16"))
    for cid in ("mi355x", "b300", "gaudi3", "l40s"):
        chip = get_chip(cid)
        p = evaluate(cost, Deployment(chip=chip, chips=8, strategy="tp", batch=16, context=2048,
                                      precision=Precision(weight="fp8", kv="bf16"), system=system_for(chip)))
        assert p.feasible, (cid, p.reason)
        assert p.breakdown_ms["communication"] > 0
    # the PCIe card pays more for its all-reduce than the 8-GPU NVLink / Infinity Fabric boxes
    comm = {}
    for cid in ("l40s", "b300"):
        chip = get_chip(cid)
        comm[cid] = evaluate(cost, Deployment(chip=chip, chips=8, strategy="tp", batch=16, context=2048,
                                              precision=Precision(weight="fp8", kv="bf16"),
                                              system=system_for(chip))).breakdown_ms["communication"]
    assert comm["l40s"] > comm["b300"]
