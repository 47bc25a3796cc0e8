"""Run the microbenchmarks and write a chip profile: the catalog's chip format (figures with sources),
plus measured efficiencies and fixed host overheads, which `compare`, `predict` and `plan` read with
`--profile`."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from modelchip.calibrate import microbench
from modelchip.cost.conventions import Precision
from modelchip.cost.efficiency import defaults
from modelchip.cost.model_cost import model_cost
from modelchip.runtime.backends import get_backend

GEMM_SHAPES = ((1, 576, 1536), (16, 576, 1536), (64, 1024, 1024), (256, 1024, 1024), (512, 2048, 2048))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STREAM_TOKENS = (1, 2, 4, 8, 16, 32, 64)


def _device_memory(device: torch.device) -> float:
    if device.type == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    accel = getattr(torch, device.type, None)  # e.g. torch.npu / torch.musa: whatever the backend's device is
    props = getattr(accel, "get_device_properties", None)
    return float(props(device).total_memory) if props else 0.0


# Passes a calibration makes over every measurement; each figure is the median pass, so a burst of other
# work on the machine during one pass is outvoted instead of moving the profile.
PASSES = 3
# A pass whose headline figures (the toy decode step, one-row weight streaming) are this far from the median
# pass ran while something else took the cores; the profile names it.
PASS_DISTURBED = 0.15


def _measure_pass(ops, dev: torch.device, progress: Callable[[str], None]) -> dict:
    """One pass over every microbenchmark: raw figures (rates in /s, times in s) by name."""
    fig: dict = {}
    for name, dtype in DTYPES.items():
        for m, k, n in GEMM_SHAPES:
            progress(f"GEMM {name} {m}x{k}x{n}")
            fig[f"gemm {name} {m}x{k}x{n}"] = microbench.gemm(ops, m, k, n, dtype)
    progress("weight streaming by batch (1..64 rows), per weight dtype")
    for name, dtype in DTYPES.items():
        for m in STREAM_TOKENS:
            fig[f"stream {name} {m}"] = microbench.weight_streaming(ops, 576, 1536, dtype, tokens=m)
    progress("memory bandwidth (256 MB read)")
    fig["read"] = microbench.read_bandwidth(dev, sync=ops.synchronize)
    progress("weight streaming (one-token linears over a 512 MB pool of 1536x576 matrices)")
    for name, dtype in DTYPES.items():
        fig[f"stream {name}"] = microbench.weight_streaming(ops, 576, 1536, dtype)
    progress("attention decode")
    fig["attention 4x4096"] = microbench.attention_decode(ops, 4, 4096)
    fig["attention 1x16"] = microbench.attention_decode(ops, 1, 16)
    fig["attention 16x16"] = microbench.attention_decode(ops, 16, 16)
    progress("op call overhead")
    fig["op alone"] = microbench.op_overhead(ops)
    fig["moe expert"] = microbench.moe_expert_overhead(ops)
    for n, extra in microbench.op_overhead_cold(ops):
        fig[f"op cold after {int(n)} bytes"] = extra
    progress("host cost of a decode step (toy models of 1 and 4 layers, 1 and 16 sequences)")
    from modelchip.calibrate.harness import DecodeHarness, steps_needed, time_interleaved, tiny_model

    harnesses = {}
    for layers in (1, 4):
        toy = tiny_model(ops, layers=layers)
        fig[f"op calls {layers} layers"] = model_cost(toy.spec, Precision()).op_calls()
        fig["fused layers"] = float(toy.fused_stack is not None)  # the backend runs the layers as one stack
        for n in (1, 16):
            h = DecodeHarness(toy, n, 16, steps_needed(30))
            h.prefill()
            harnesses[f"toy step {layers} layers {n} seqs"] = h
    # the four toy models step in turn: the costs below are differences between them, which a burst of load
    # falling on one and not the others would distort
    for key, t in time_interleaved(harnesses, 30).items():
        fig[key] = t.seconds
    return fig


def _disturbed(passes: list[dict], median: dict) -> list[int]:
    """Passes (numbered from 1) whose headline figures strayed more than PASS_DISTURBED from the median."""
    keys = ("toy step 1 layers 1 seqs", "toy step 4 layers 1 seqs", "stream fp32 1", "stream bf16 1")
    return [i + 1 for i, f in enumerate(passes)
            if any(abs(f[k] / median[k] - 1) > PASS_DISTURBED for k in keys)]


def calibrate(backend: str = "reference", device: str = "cpu", progress: Callable[[str], None] = print,
              passes: int = PASSES) -> dict:
    if passes < 1:
        raise ValueError(f"passes must be at least 1, not {passes}")
    ops = get_backend(backend, device)
    dev = ops.device
    microbench.take_log()  # start a fresh log of this calibration's timings
    load_before = os.getloadavg()[0]
    stamp = time.strftime("%Y-%m-%d")
    src = f"modelchip calibrate, backend {backend} on {dev}, {stamp}"
    runs, timings = [], {}
    for i in range(passes):
        runs.append(_measure_pass(ops, dev, lambda m, i=i: progress(f"pass {i + 1}/{passes}: {m}")))
        timings |= {(f"pass {i + 1}: {k}" if passes > 1 else k): t for k, t in microbench.take_log().items()}
    fig = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    # packed formats once: each of their timings is already retaken when disturbed (calibrate/quant_streaming.py)
    weight_streaming = _packed_streaming(ops, progress)
    timings |= microbench.take_log()
    disturbed = _disturbed(runs, fig) if passes > 1 else []
    if disturbed:
        progress(f"pass {', '.join(map(str, disturbed))} strayed more than {PASS_DISTURBED:.0%} from the median "
                 "pass (other work on the machine?); the median pass is used")
    gemm = {f"{name} {m}x{k}x{n}": fig[f"gemm {name} {m}x{k}x{n}"] for name in DTYPES for m, k, n in GEMM_SHAPES}
    by_tokens = {name: {m: fig[f"stream {name} {m}"] for m in STREAM_TOKENS} for name in DTYPES}
    read_bw = fig["read"]
    stream = {name: fig[f"stream {name}"] for name in DTYPES}
    # the device's bandwidth: the best read rate any kernel reached; efficiencies are fractions of it
    copy_bw = max(read_bw, *stream.values(), *(v for table in by_tokens.values() for v in table.values()))
    t_long, t_one, t_many = fig["attention 4x4096"], fig["attention 1x16"], fig["attention 16x16"]
    kv_bytes = 4 * 4096 * 2 * 2 * 64 * 4  # seqs x context x (K, V) x kv heads x head dim x fp32
    per_op_alone = fig["op alone"]
    per_seq = max((t_many - t_one) / 15, 0.0)
    calls = {layers: fig[f"op calls {layers} layers"] for layers in (1, 4)}
    steps = {(layers, n): fig[f"toy step {layers} layers {n} seqs"] for layers in (1, 4) for n in (1, 16)}
    # An op inside a model costs more than the same op timed alone in a hot loop (the model's glue between
    # calls, colder caches): the per-call cost is what three more layers add, per op call they make. A backend
    # that runs the layers as one fused stack has no Python between its calls, so that floor does not hold
    # there: what three more layers add is all there is.
    fused = bool(fig["fused layers"])
    per_layer_op = (steps[4, 1] - steps[1, 1] - 3 * per_seq) / (calls[4] - calls[1])
    per_op = max(per_layer_op, 0.0) if fused else max(per_layer_op, per_op_alone)
    step_fixed = max(steps[1, 1] - calls[1] * per_op - per_seq, 0.0)
    step_per_seq = max((steps[1, 16] - steps[1, 1]) / 15 - per_seq, 0.0)
    unsteady = sorted(name for name, t in timings.items() if not t.steady)
    if unsteady:
        progress(f"still unsteady after {microbench.ATTEMPTS} attempts (machine busy?): {', '.join(unsteady)}")
    peaks = {name: max(v for key, v in gemm.items() if key.startswith(name)) for name in DTYPES}
    base = defaults()
    profile = {
        "id": f"{platform.node() or 'local'}-{dev.type}-{backend}".lower(),
        "name": f"{platform.processor() or platform.machine()} ({dev}, {backend} backend, {torch.get_num_threads()} "
                f"threads)",
        "vendor": "measured", "kind": dev.type, "status": "ok",
        "notes": f"Measured by modelchip calibrate in {passes} pass(es), each figure the median pass; each timing "
                 "is the median of repeated rounds, retaken when "
                 f"they spread by more than {microbench.MAX_SPREAD:.0%} (interquartile range / median); peaks are "
                 "the best GEMM throughput reached, bandwidth the best read rate; efficiencies are measured "
                 "fractions of those. "
                 + (f"Pass(es) {', '.join(map(str, disturbed))} strayed more than {PASS_DISTURBED:.0%} from the "
                    "median (other work on the machine), outvoted by the others. " if disturbed else "")
                 + (f"Still unsteady after {microbench.ATTEMPTS} attempts, so less trustworthy: "
                    f"{', '.join(unsteady)}." if unsteady else "Every timing was steady."),
        "flops": {name: {"value": v, "source": f"{src}: best GEMM over {len(GEMM_SHAPES)} shapes", "tag": "D"}
                  for name, v in peaks.items()},
        "memory": {
            "capacity": {"value": _device_memory(dev), "source": f"{src}: device memory", "tag": "D"},
            "bandwidth": {"value": copy_bw, "source": f"{src}: best read rate (256 MB sum, one-token linear)",
                          "tag": "D"},
        },
        "efficiency": {
            "gemm": 1.0,  # the peak is itself the measured GEMM rate
            "attention_compute": base.attention_compute,
            "memory": min(stream["fp32"] / copy_bw, 1.0),
            "attention_memory": min(kv_bytes / t_long / copy_bw, 1.0),
            "scale_up": base.scale_up, "scale_out": base.scale_out, "memory_reserved": base.memory_reserved,
            # small-batch matmuls stream weights more slowly than one-row ones: measured per row count
            "memory_by_tokens": _fractions(by_tokens["fp32"], copy_bw),
            # a backend's matmuls stream each weight dtype at their own rate (a bf16 kernel is not an fp32 one):
            # `apply_profile` takes the entries of the deployment's weight dtype over the float32 ones above
            "by_weight_dtype": {name: {"memory": min(stream[name] / copy_bw, 1.0),
                                       "memory_by_tokens": _fractions(by_tokens[name], copy_bw)}
                                for name in DTYPES},
        },
        "weight_streaming": weight_streaming,
        "overhead": {"per_op_s": per_op, "per_seq_s": per_seq, "per_step_s": step_fixed,
                     "per_seq_step_s": step_per_seq, "per_expert_s": fig["moe expert"],
                     # a small op's extra cost when a layer's worth of bytes streamed since it last ran
                     "cold_op_s": [[n, fig[f"op cold after {n} bytes"]] for n in microbench.COLD_STREAM_BYTES]},
        "measurements": {"gemm_flops": gemm, "read_bandwidth": read_bw, "weight_streaming_bandwidth": stream,
                         "attention_decode_s": {"4x4096": t_long, "1x16": t_one, "16x16": t_many},
                         "op_call_alone_s": per_op_alone, "op_call_in_model_s": per_op,
                         "fused_layers": fused,
                         "toy_step_s": {f"{layers} layers, {n} seqs": t for (layers, n), t in steps.items()},
                         # per timing: relative spread of its rounds, and how many attempts it took
                         "spread": {name: {"spread": round(t.spread, 4), "rounds": t.rounds, "attempts": t.attempts}
                                    for name, t in timings.items()},
                         "unsteady": unsteady,
                         # every pass's raw figures, and the ones that strayed from the median pass
                         "passes": runs, "disturbed_passes": disturbed},
        "calibrated": {"date": stamp, "backend": backend, "device": str(dev), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                       # runnable processes (1-minute average) before and after: above the CPU count, other
                       # work was competing for the cores while this was measured
                       "load_average": [load_before, os.getloadavg()[0]], "fallbacks": ops.fallback_report()},
    }
    return profile


def _fractions(rates: dict[int, float], bandwidth: float) -> list[list[float]]:
    return [[m, min(v / bandwidth, 1.0)] for m, v in rates.items()]


def _packed_streaming(ops, progress: Callable[[str], None]) -> dict:
    """Weight streaming per packed format (calibrate/quant_streaming.py), in the activation dtype the backend
    packs for (bfloat16 where it can), with its source line: the planner prices those formats' weight reads
    from it (cost/streaming.py)."""
    from modelchip.calibrate import quant_streaming

    bf16 = torch.bfloat16 in getattr(getattr(ops, "backend", ops), "pack_dtypes", {torch.bfloat16})
    section = quant_streaming.measure(ops, torch.bfloat16 if bf16 else torch.float32, progress)
    section["source"] = (f"modelchip calibrate, backend {ops.name} on {ops.device}: the backend's prepare_linear and "
                         f"linear over {quant_streaming.POOL_BYTES >> 20} MB pools of packed "
                         f"{quant_streaming.SHAPE[0]}x{quant_streaming.SHAPE[1]} weights")
    return section
