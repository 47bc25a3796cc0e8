"""`modelchip validate`: predict every published measured deployment and show the error."""

from __future__ import annotations

from pathlib import Path

from modelchip.cli import common
from modelchip.cost import validation

HEADER = """# Validation: predictions against published measured deployments

Written by `modelchip validate --write docs/validation.md`. Each row is a measured result from
`src/modelchip/spec/catalog/deployments.toml`, predicted from its published setup by the step-time model
(`modelchip predict`; serving points by `--phase serve`). Nothing in the model is fitted to these points; setup
figures a source leaves out are listed as assumed. Errors are predicted speed over measured speed less one
(+: the model is too fast), for rates and times alike.

Two errors per point: **in-sample** uses the whole catalog; **leave-one-source-out (LOSO)** predicts each
source's points from a catalog without the measured kernel, link and efficiency figures of that source and of
the publications it lists as the same team's measurements of the same systems (DeepSeek's day-6 points lose
DeepEP, DeepGEMM, FlashMLA and the V3 report's link figures; CloudMatrix's points lose its GEMM, MLA and EP
tables). Spec-sheet peaks, bandwidths and capacities stay. Regimes: latency-bound where a chip holds at most
16 sequences per step, else throughput-bound; decode, prefill and serving apart.

"""

NOTES = """
## What is missing where the model misses

Every miss stays in the table. The mechanisms we believe are missing, by group:

- **Small-batch decode on Blackwell and H20 (DeepSeek-R1 at batch 1: 5-12x too fast on B200, 1.6x on H20).**
  A batch-1 step of a 61-layer MoE model on TP8 is a chain of some 1,200 small kernels and 122 all-reduces;
  its time is set by the per-kernel floor inside a CUDA graph and by the all-reduce latency, not by bytes. The
  catalog has the Hopper NVLink all-reduce latency (17 us, vLLM's NCCL timing) but no Blackwell one, and no
  published per-kernel floor for graph-replayed kernels was found (searched: NVIDIA's CUDA Graphs posts,
  HolisticTraceAnalysis, vLLM and SGLang profiles). Until one is measured, these points stay out.
- **FP4 on Blackwell (Llama 70B/405B FP4 +40-86%, Qwen3-235B FP4 +210%, Maverick FP4 +117%).** No FP4 GEMM
  benchmark per shape is in the catalog (cuBLAS 12.9 publishes ratios only), so FP4 matmuls run at the scalar
  default of 0.77 of the FP4 peak; Blackwell FP8 has one small-M CUTLASS table (vLLM PR #20071).
- **Aggregated serving with data-parallel attention (Qwen3-235B, Maverick, DeepSeek-R1 max-throughput:
  +28-210%).** A prefill on one attention rank stalls every rank at the next expert all-to-all, and the
  busiest expert rank sets the pace; no published figure gives either (SGLang's balancedness figures are
  images), so neither is modelled.
- **AMD MI300X (Llama 3.1 405B TP8, +141-170% at every batch).** No CDNA3 GEMM or attention benchmark is in
  the catalog; the scalar defaults (measured on Ascend and Hopper) are far from vLLM-on-ROCm in 2024.
- **Ascend 910C decode out of sample (+79-157% LOSO, +19-95% in-sample).** The CloudMatrix paper is the only
  source of Ascend kernel figures; without it the 910C runs at the Hopper-derived defaults. In-sample the
  small batches (8 and 24 per NPU) stay 1.9x fast: the per-layer fixed cost of its decode (874 us per layer at
  batch 96, the paper's Figure 22) is not all bandwidth.
- **Step-3 AFD on Hopper (+93-117%; 3A2F infeasible).** The paper does not name the GPU (H800 assumed). The
  model pipelines attention, network and FFN ideally over three micro-batches; StepMesh's measured per-stage
  budget (272 us per layer at 50 ms TPOT) suggests the stages do not overlap that well. The 3A2F point holds
  6,048 sequences at 4K average context: memory is checked at the average, so it reads just out of memory.
- **Setups that do not fit as published.** SGLang's GB200 prefill offloads weights to Grace memory (the model
  has no host offload); two TensorRT-LLM v0.6 A100 static batches need more memory than the model's 10%
  reserve allows (TensorRT-LLM reserves a fraction of the memory left after weights, not of the device).
- **DeepSeek's online prefill (+41% in-sample)** is a 24-hour service average after 56.3% on-disk cache hits,
  under varying load; the model predicts a saturated step (kept as before).
"""


def register(sub) -> None:
    p = sub.add_parser("validate", help="predict the published measured deployments and show the error table")
    p.add_argument("--write", metavar="FILE.md", help="write the table as Markdown (e.g. docs/validation.md)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    result = validation.run()
    if args.json:
        common.print_json(result)
    else:
        print(validation.markdown(result))
    if args.write:
        Path(args.write).write_text(HEADER + validation.markdown(result) + NOTES)
    return 0
