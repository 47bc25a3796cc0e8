"""`modelchip validate`: predict every published measured deployment and show the error."""

from __future__ import annotations

from pathlib import Path

from modelchip.cli import common
from modelchip.cost import validation

HEADER = """# Validation: predictions against published measured deployments

Written by `modelchip validate --write docs/validation.md`. Each row is a measured result from
`src/modelchip/spec/catalog/deployments.toml` (sources in the reference deployments.md), predicted from its
setup by `modelchip predict`'s step-time model with default efficiencies. Nothing in the model is fitted to
these points; setup figures a source leaves out are listed as assumed.

"""

NOTES = """

## Where the misses come from

- The two TensorRT-LLM v0.5 fixed-batch points (batch 64: 64 sequences on one GPU for LLaMA 7B, 16 per GPU
  for LLaMA 70B on TP4) carry little work per step, so fixed costs decide them. Both are now costed from
  published figures: gptSessionBenchmark takes CUDA graphs only with the opt-in `--enable_cuda_graph` and
  the published commands for these runs omit it (`graphs = false` on the points), so each of the step's op
  calls pays H100's catalog launch cost (5 us, the low end of the 5-20 us CPU-side launch time in Meta's
  HolisticTraceAnalysis docs; a generic CUDA figure, not an H100 measurement): 388 kernels, 1.9 ms per 7B
  step, and 964 kernels, 4.8 ms per 70B step. Each TP all-reduce also pays the HGX-H100 NVLink collective
  latency (19 us, derived from vLLM's NCCL all-reduce timings on H100): 160 per 70B step, 3.0 ms. That takes
  7B from +64% to +12% and 70B from +96% to +9% (with the collective latency alone, graphs kept: +64% and
  +50%). The op list is the runtime's, not TensorRT-LLM's kernel list: it counts rotary and KV-cache writes
  that TensorRT-LLM's attention plugin fuses and misses its FP8 quantize and residual-add kernels, and the
  launch figure is a range the low end was taken from, so the agreement is not tight evidence.
- The TensorRT-LLM maximum-load points are predicted 9-28% fast (the two Llama-70B TP2 points picked up the
  all-reduce latency: 2048/2048 went from +20% to +9%, 128/128 from +27% to +25%; they keep graphs, the
  default, as no source says otherwise). Counting the memory-bound kernels between the matmuls (two fused
  add+RMSNorm per layer, SiLU-and-mul, logits written and read by sampling) took the worst of them,
  Llama-8B 128/128, from +50% to +28%; the rest is most likely FP8 GEMM efficiency at these
  shapes and engine scheduling, which no published operator figure in the catalog covers.
- MLA prefill is costed in the expanded form engines run it in (vLLM, SGLang: latent decompressed, ordinary
  multi-head attention), a third of the absorbed form's attention FLOPs (kv_b counted once per token,
  as the projection it is). SGLang's three prefill points,
  saturated benchmarks, land within 5%. DeepSeek's online prefill counts the tokens computed after on-disk
  cache hits (56.3% of input tokens), so it is predicted with each prompt's first 56.3% as a cached prefix
  (`--cached-prefix`): the computed tokens attend over the whole 4,989-token prompt, which takes the point
  from +60% (costed as fresh prompts) to +50%. The rest is load: it is a 24-hour service average, and
  DeepSeek moves nodes between inference and research with the load (278 nodes at peak, 226.75 on average
  over the day, DeepSeek day 6), so part of the node-hours ran below saturation, by an amount not
  published; the model predicts a saturated step and is not fitted to it. RTP-LLM's prefill (+24%) is the
  same 4K-prompt EP32 setup as SGLang's 4K point, on H800 over RoCE and under a 1.6 s TTFT bound,
  differences the model does not see.
  (Costed absorbed, as before, and with fresh prompts, DeepSeek's, RTP-LLM's and SGLang's prefill points
  read +24%, +2% and -4...-16%: right for the wrong reason.)
- DeepSeek's online decode figure is a service average too (varying load), so a steady-state model reads
  high on it.
- Decode is predicted without compute/communication overlap (`--overlap` models ideal two-micro-batch
  overlap); with it the decode points come out 1.6-2x too fast, so the published systems hide much less than
  the ideal.
- Against the targets: the median is under 15%, but not every point is within 30%: DeepSeek's online
  prefill (+50%) stays out, for the reasons above. The fixed costs exist only where a figure is published:
  no other chip has a launch figure and no other system a collective latency (zero there), EP all-to-all
  across scale-up domains and AFD traffic carry none, and under the default `graphs = true` prefill steps,
  which engines often run eagerly, pay no launches either.
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
