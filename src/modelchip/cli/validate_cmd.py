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
tables; Step-3's lose its Table 9 and StepMesh's straggler figure). Spec-sheet peaks, bandwidths and
capacities stay. Regimes: latency-bound where a chip holds at most 16 sequences per step, else throughput-bound;
decode, prefill and serving apart.

"""

NOTES = """
## What is missing where the model misses

Every miss stays in the table. The mechanisms we believe are missing, by group:

- **Ascend 910C decode (+23-50% in-sample, +31-58% out of sample) and prefill (+33%, +47%).** Dispatch and combine
  now keep the small-batch floor DeepEP-Ascend's fused-MoE doc measures (80 / 75 us at 32 tokens per rank), which
  took the 8-sequence point from +92% to +35%. A 910C is two ranks, one per die (`devices` in its chip file), and
  the CANN and DeepEP-Ascend tables are timed per rank: the model read them at a whole chip's tokens (two dies'
  worth, up to 256 tokens against a table that stops at 128), which made it slower here. Read per die, the decode
  points moved from +25-57% to +39-71% (+30-64% to +48-79% out of sample) and the prefill point, now EP32 in ranks
  and so charged the measured EPLB imbalance, from +37% to +33%. CloudMatrix-Infer pipelines two micro-batches in
  decode by splitting the 910C's cube and vector cores between them; the model has no measurement of what that
  split costs each stream, nor a kernel floor for Ascend's graph mode. Out of sample the 910C also loses the
  CloudMatrix GEMM and MLA figures (the scalar defaults apply). Prefill attention on davinci now runs at the
  utilization torch_npu's flash attention reaches on a 910B2 at 32K tokens (42.6%, pto-isa's sweep), where it took
  a decode kernel's 65%: the prefill point moved from +50% to +37% (+67% to +50% out of sample). A per-operator
  decode profile of DeepSeek on a 910B or 910C from another source is what these points needed. xDeepServe
  (Huawei Cloud's FlowServe, arXiv 2508.02520 Figure 20) publishes one: DeepSeek-R1 on 288 910C dies, DP288 +
  EP288, 60 sequences per die with one MTP layer, a ~93 ms iteration of which dispatch and combine are 35.7%, at
  234 and 312 us on average per call against 185 and 165 us at their fastest. What a call takes beyond its
  fastest is the wait for the slowest rank (the paper: dispatch absorbs the variance of MLA across the DP ranks,
  combine the imbalance of MoE across experts): 12.8% of the iteration waiting against 64.3% computing, a mean
  balance of 0.834 (`ep_barrier_balance`, from 288 ranks up). Each expert-parallel decode step there now waits
  its compute x (1/0.834 - 1), less the expert imbalance and attention wait the model already charges
  (`ep_barrier_wait`, about 7.7 ms of the 96-sequence step). The decode points moved from +36-68% to +23-50%
  (+45-77% to +31-58% out of sample). The same profile shows what is still missing: MultiLatentAttention is 21.8%
  of the iteration (about 330 us per layer at 120 query tokens per die and ~3K context, 82% of a die's BF16
  peak, some layers computing attention in INT8), so the CloudMatrix MLA figure the model uses (65.4%) makes
  attention slower than xDeepServe ran it; 'Others' (11.7%, about 175 us per layer) and MlaPreprocess (8.7%) are
  more than the model's norms, activations and attention projections. The MTP verify step is priced as the
  kernels run it: each sequence's cache is read once for its 1 + draft query tokens and the core's FLOPs grow
  with them, so absorbed MLA, compute-bound on a 910C, costs twice per step with one draft. Before xDeepServe,
  Ascend's cann-recipes-infer DeepSeek-R1 decode guide lists the fused operators (MLAProlog, fused infer
  attention, grouped matmul, MoE dispatch/combine v2, torchair graphs, SuperKernel) without times; CANN's
  MoeDistributeDispatch/Combine and SuperKernel pages give no latency; vLLM-Ascend's issues (#2905, #4295) and
  SGLang's Ascend best-practice tables give end-to-end TPOT only. The paper's own MTP ablation (read in a
  secondary summary; the batch is not stated there) measures a decode layer at 874 us without MTP and 1,260 us
  with one draft token (+44%); at 96 sequences the model gives 574 and 941 us (+64%). So the model overcharges
  what a second token per sequence costs and misses a part of the layer that does not grow with tokens, some 300
  us per layer. Being the validated source's own end-to-end layer time, it is not entered as a constant.
- **xDeepServe's own decode results (+35% and +58% in-sample, +57% and +63% out of sample).** Section 7.1's
  two runs at 2,400 tokens/s per chip (~50 ms TPOT, fixed 2K + 2K, ~90% MTP acceptance): the DP288 + EP288 run
  of Figure 20 and the disaggregated MoE-Attention run (480 attention + 288 MoE dies); both were predicted before
  anything changed (+39% and +63%). FlowServe's measured ~2 ms gap between iterations is now charged per decode
  step of that engine on davinci (`step_gap`). What stays missing is named per point: the DP288 run's
  QuantBatchMatmul + MlaPreprocess (~28.6 ms) and Others (~10.9 ms) against the model's ~14.3 and ~2.2 ms, which
  the paper gives as shares only (no call counts or per-call times, so no per-call floor follows); the MoE-Attention
  run's ~0.7 ms per layer and micro-batch on an attention die against the model's ~0.45 ms. The MultiLatentAttention
  share (~20.3 ms against the model's 25.5 ms) is not entered as an attention efficiency: section 4.7 keeps the
  non-RoPE KV in INT8 and computes some layers' attention in INT8, and the run's split is not stated. The
  production run (DP128 + EP128, 34.8 ms TPOT) publishes no batch and is not a point.
- **Step-3 AFD on Hopper (-2% to +4% in-sample, +2% to +9% out of sample; were +37% to +73% and +44% to
  +85%).** The paper does not name the GPU (H800 assumed). Its measured TPOT is 47.5 ms (6,144 sequences at
  4,039 tokens/s per GPU over 32 GPUs); the model gave about 30 ms while it costed each micro-batch at 1/m of
  the step. A micro-batch streams its side's weights as the whole batch does, so at decode sizes, where the
  FFN GPUs' expert GEMMs are bound by reading their weights, m micro-batches read them m times: each side of
  an AFD step is now costed as m steps of 1/m of the batch (the LM head and sampling once), and the extra is
  shown as `afd_micro_batch_rereads`. No constant enters with it. modelchip's own AFD runs show the mechanism:
  1 attention + 1 FFN rank at batch 16 took 62.1 ms a step with one micro-batch and 65.2 ms with two
  (BENCHMARKS.md), where costing micro-batches at 1/m predicted two to be 32% faster. StepMesh's documentation
  (github.com/stepfun-ai/StepMesh) measures the straggler cost of the synchronous attention-FFN exchange: mean
  TPOT about 2 ms above the minimum after its mitigations; each catalog AFD decode step on Hopper waits that
  (`afd_straggler_wait`). It is StepFun's measurement of its own system, so the Step-3 points lose it out of
  sample. StepMesh budgets 273 us per layer for the A2F and F2A transfers and quotes 37 us and 18 us for the
  2A2F tensors (896 KB and 1.75 MB) without saying they were measured; neither a measured per-layer network
  latency nor a measured FP8 MFA kernel is published, so the model charges bytes only.
- **Step-3 3A2F at 4K, BF16 attention: infeasible (was -2%).** Quantized checkpoints keep the token embedding
  and the LM head in BF16 (ModelOpt's exclude_modules ["lm_head"], llm-compressor's ignore ["lm_head"] with
  targets ["Linear"], DeepSeek-V3's FP8 release building its head and embedding in BF16; `Precision.head_dtype`,
  `embedding_dtype`), and AFD holds both on the attention GPUs: Step-3's 128,815 x 7,168 tables add 1.85 GB
  there, so 252 sequences of 4,096 BF16-cached tokens need 78.5 GB against the 77.0 GB the planner leaves after
  its 10% reserve. The paper ran this batch, so either StepMesh reserves less than 10% of an H800 or its
  checkpoint quantizes the tables; neither is published, and the correction stands for the other 50-odd
  quantized points (0.1-3.7 points each: Qwen3-8B SGLang FP8 +8.1% to +4.4%, Llama FP8 on H200 1-3 points
  slower, the Blackwell FP4 points 0.1-0.8 points slower).
- **Blackwell FP4 dense GEMMs (Llama 70B FP4 on B200/GB200 -7% to -31%).** The FP4 per-M benchmarks at decode
  sizes are vLLM's CUTLASS runs on one 6144 x 4096 weight (12.6 MB), 13.4-14.6 us from M = 1 to 256: a call that
  small is set by the kernel's fixed time, and read as a fraction of bandwidth (13-15%) it made 70B's 100+ MB
  calls stream 5x slower than their bytes. A weight-size sweep of the same CUTLASS NVFP4 kernel at M = 1
  (pytorch/helion PR #3079 on GB200, nine projection shapes of 9.4 to 132 MB, 70B's QKV, O and down among them)
  now sets how fast each dense call streams by its own size (`weight_sweep` in kernels.toml): 11% of the 8 TB/s at
  9.4 MB, 26% for 70B's QKV, 30% for its FFN calls. So it measures what the small shape could not: past the fixed
  time a large call still streams far below bandwidth. The compute side of those calls is the FLOP-bound rows'
  median at their M. This took the MLPerf Interactive points from -81% and -79% to -25% and -18%, and the
  long-context and 2K/2K TensorRT-LLM points from -28% and -38% to -9% and -24%; the other Llama FP4 points moved
  0.6-1.7 points faster, DeepSeek-R1 FP4 at batch 1 (FP4 dense layers and shared experts, small TP8 shards below
  the sweep's smallest size) 0.2-0.4 points slower (+10.9%, -6.3%, -29.7%), and nothing else: MoE experts kept the
  curve by M (corrected since: next item), and no other architecture has a sweep.
  That compute side was a median over whichever benchmarks measured at exactly that M, so a benchmark dropped
  out above its largest M and the curve jumped: 31% of the FP4 peak at M = 1,024 (vLLM's 6144 x 4096 and
  FlashInfer's 7168 x 4608), 29% at 2,048 (vLLM's alone), 47% at 8,192 (with TorchAO's 8192^3), 34% from 16,384
  on (vLLM's alone again), so a whole-cohort prefill ran at the small shape's rate. A shape's FLOP-bound fraction
  of peak does not fall as M grows (vLLM's rows rise from 2,221 to 3,039 TFLOPS between M = 1,024 and 16,384), so
  each benchmark's rows at its largest M now also vote at every larger M (below its smallest M it does not vote):
  31%, 33%, 37%, 37% at those four M. No figure was added. The Blackwell points moved as follows (in-sample equals
  out of sample: none of these tables comes from a validated source): MLPerf v5.1 B200 Offline, Server,
  Interactive -36.4%, -34.7%, -24.9% to -31.3%, -29.6%, -22.5%; GB200 -31.8%, -28.4%, -17.7% to -26.3%, -22.6%,
  -15.1%; TensorRT-LLM 70B FP4 on B200 128/128 -20.6% to -11.8%, 1000/1000 -25.7% to -24.0%, 20000/2000 -9.0%
  to -6.5%, on GB200 128/2048 -30.7% to -30.5%, 2048/2048 -23.7% to -22.3%; 405B FP4 -4.4% to -4.1% (B200) and
  -15.8% to -11.0% (GB200); Maverick FP4 -26.4% to -25.9%; Qwen3-235B FP4 +43.0% to +43.8% and SGLang's GB200
  decode +14.8% to +15.0% (both slightly worse: their dense attention projections got faster); SGLang's GB200
  prefill -4.7% to -4.3%; DeepSeek-R1 FP4 on B200 and every other point unchanged.
  What remains is the level at 70B's sizes: at M 200-2,000 the compute side is still the 6144 x 4096 shape with
  its activation quantization (17% of the FP4 peak at M = 512, 25-34% above) and one 7168 x 4608 row at M =
  1,024 (37%); MLPerf Offline (1,596 sequences per B200, FFN now at 32.5%) needs about 45-50%. Published NVFP4
  GEMMs on large shapes reach that at M >= 4,096 (TorchAO PR #2427: 50-61% at M = N = K 4,096 to 8,192, in the
  catalog; SGLang PR #22091 on B200: 50-67% on diffusion shapes of N 6,144-55,296 at M 4,096-4,608, GEMM alone).
  The figure wanted is still an NVFP4 GEMM sweep at M 128-8,192 on 70B's shapes (N 10,240 and 57,344 at K 8,192;
  N 8,192 at K 28,672) on B200 or GB200, with and without the activation quantization. Whether TensorRT-LLM runs
  that quantization as a kernel of its own matters as much: its PyTorch flow fuses add + RMSNorm + NVFP4
  quantization into one kernel (`RMSNorm(quantize_type="nvfp4")`, `fused_add_rms_norm_quant`, wired for some
  models), which would make vLLM's no-quant column (2,895 TFLOPS at M = 1,024, 32% of peak, against 2,221 with
  the quantization) the one that applies; the Llama model file we could read (tensorrt_llm/_torch/models/
  modeling_llama.py, spring 2025) builds its norms without it, and what NVIDIA's MLPerf v5.1 build runs was not found,
  so the quantized column stays. Searched and not found: vLLM PR #25609 (FBGEMM NVFP4 on Llama 3.3 70B, B200;
  its bench_nvfp4_gemm.py table is not in any excerpt we could reach; the script writes its results to a local
  folder, not to the repository), the other three shapes of vLLM PR #20646's / #20578's tables (8B's
  28672 x 4096, 4096 x 14336, 4096 x 4096: only the first shape's rows could be read), vLLM PR #42235
  (FlashInfer CuTeDSL, CUTLASS and TRTLLM NVFP4 backends on SM100 and SM103, four shapes; only its N = 7168,
  K = 2048 rows to M = 32 could be read) and FlashInfer PR #2540 (GB200 mm_fp4 backends; first rows only).
  Found and not used: vLLM PR #38338 (Triton NVFP4 on 70B's four shapes at M = 4,096, 845-874 TFLOPS: an RTX
  5090, SM 12.0, 26% of its peak, not the datacenter kernel); the WUSH paper's Figure 2 (MXFP4 speedups over
  BF16 on 70B's shapes at M = 1,024 on an RTX 5090, read from a plot); the same helion benchmark on B200 with FP4
  activations (PR #3046, 9.4-59.1 us: the quantization left out, unlike the other FP4 tables); FlashInfer issue
  #1732 (M = 1, 8192 x 8192, 1.78 TB/s, one shape); FlashInfer PR #3560 and #5100 (SM 12.0 kernels); a GPU MODE
  hackathon GEMV (24.2 us for 70B's down_proj, helion issue #2417: not a kernel the measured engines run).
  Rechecked 2026-12-02, which term sets these misses: on GB200 at 128/2048 (412 sequences, 52.4 ms a step) the
  dense FFN and attention projections take 32.3 ms, both at the curve's 17% of the FP4 peak (vLLM's 8B QKV shape
  at M = 512: with 128 x 256 tiles 96 of them for 148 SMs, under one wave, where 70B's 57,344-wide gate/up fills
  about six), the attention core 13.3 ms, the per-call graph floor 3.6 ms; on B200 at 1000/1000 (431 sequences)
  the GEMMs take 37.6 ms of 80.9, the attention core 18.2.
  The attention core is not what is slow: vLLM PR #23647 times trtllm-gen decode with FP8 Q and KV
  on 70B's heads (64 query / 8 KV of 128; benchmarks/kernels/benchmark_trtllm_decode_attention.py, lengths drawn
  uniformly below the maximum, one call timed by CUDA events) at 0.079 ms for 256 sequences up to 1,024 tokens and
  0.111 ms up to 2,048, about 3.4 and 4.8 TB/s by the mean length (42-60%), below the catalogued 73% (its rows past
  2,048 could not be read; not entered). The per-call floor (`graph_kernel`, 3.77 us derived from batch-1 decode
  on H100) is charged at every batch, on top of GEMM rows that already time their own ramp and tail. Its launch
  part is measured: a graph-replayed kernel that does no work takes 1.3 us on H100 (Hazy's own microbenchmark, 2.1
  us without graphs, read as Luminal's 'Compiling Models to Megakernels' quotes it), and pegainfer issue #569 times
  0.96 us of raw gap between two empty kernels that PDL removes (%globaltimer, isolated pair). Tried 2026-12-02 and
  not kept: 1.3 us additive per call, the other 2.47 us a floor each call's own time covers (as gemm_call_floor /
  small_kernel_floor). GB200 128/2048 moves -30.5% -> -27.2% (floor 3.6 -> 1.3 ms), B200 1000/1000 -24.1% ->
  -21.8%, but batch-1 steps lose it too: Llama-3.2-1B on H100 comes out at 50.7% of bandwidth against Hazy's
  "at most 50%", TensorRT-LLM's B200 R1 batch-1 +11.2% -> +23.8%, Ant's H20 decode +2-6 points, GPUStack's
  H100 Qwen3-8B at concurrency 4 +6 and +10, H100/H200 max-load points +1-8; medians 15.7%/15.7% ->
  17.2%/17.3%, within 30% 96/97 -> 94/95. So at batch 1 the non-launch part behaves additively on top of the
  isolated-kernel rows, and where it stops doing so with batch has no measurement. MLPerf's B200/GB200 llama2-70b
  points (use_graphs False) do not pay this floor at all. Also searched and not usable: FlashInfer PR #1979's
  cuDNN backend on the catalogued 1024 x 7168 x 4608 (3,798 TFLOPS against CUTLASS's 3,440 in the same run:
  backends differ by ~10% at one shape); FlashInfer's benchmarks/samples/sample_testlist_output.csv (mm_fp4
  at M = 8,192, N 4,096, K 16,384: CUTLASS 5,310 TFLOPS, GPU not stated, and only at M = 8,192); XLA's
  matmul_interpolator_data.h (measured sm_100 GEMM rates by m, n, k, BF16 and FP8 only, no FP4).
- **Blackwell FP4 routed experts read the dense curve at one projection's weight size (a units correction).**
  No grouped or fused-MoE FP4 benchmark covers Blackwell, so routed experts took the dense per-M curve at their
  rows per expert, whose decode rows are vLLM's one 6144 x 4096 weight (12.6 MB, 13-14% of the 8 TB/s): Maverick's
  16 experts per GPU streamed at about 1.1 TB/s (24.2 ms of a 512-sequence decode step). A grouped MoE GEMM
  (TensorRT-LLM's CUTLASS and TRTLLM-Gen kernels, SGLang's) runs every expert hit in one launch per projection,
  paying its fixed time once over the sum of their weights, so without a grouped benchmark each launch (gate_up,
  down) now streams at the weight-size sweep's rate for all hit experts' weights, and computes at the FLOP-bound
  rows' efficiency at its rows per expert, as a dense call does (Maverick's step: 12.1 ms of experts). Unchanged:
  Hopper FP8 and Ascend INT8 (grouped benchmarks), Hopper BF16 tensor-parallel experts (the fused MoE layer);
  Blackwell FP8 (SGLang's GB200 FP8 prefill, 2,000 rows per expert, compute-bound) and CDNA3 FP8 have no sweep
  and keep the curve by M. Points moved (in-sample equals out of sample): Maverick FP4 -38.5% to -23.1%;
  DeepSeek-R1 FP4 at batch 1 with relaxed MTP -30.8% to -15.2%, with MTP 3 -7.8% to +13.0%, without MTP +10.9% to
  +11.2% (TP8 shards of 8 experts, near the sweep's small sizes); and worse: Qwen3-235B FP4 +17.3% to +29.3%,
  DeepSeek-R1 FP4 max-throughput -5.4% to +21.2%, SGLang's GB200 FP4 decode +14.8% to +17.9% (1,877 rows per
  expert: the FLOP-bound compute side). Medians 16.0% and 16.9% to 16.9% and 17.2%, 95 and 96 within 30%; kept
  as a correction. The sweep is a dense kernel that stays near 30% of bandwidth past 100M weights; FlashInfer's
  DeepSeek-V3 MoE benchmarks (PRs #4048 and #4366: B200, EP8 simulated as 32 local experts; #4985 and #5301:
  TRTLLM NVFP4 MoE 0.153-0.172 ms at 128-512 tokens, 4.6-5.1 TB/s over the 32 experts' 793 MB) suggest a fused
  FP4 MoE launch streams near twice that, so the overpredicted points above miss elsewhere. Not entered: only
  excerpts could be read, the GPU of the #4985/#5301 tables is not stated in them (a B300 appears in #4985's
  thread), and the fused_moe table form counts every expert as local. Wanted: TensorRT-LLM's NVFP4 MoE time by
  tokens at EP8 on B200 for DeepSeek-R1, Qwen3-235B and Maverick's shapes.
- **Aggregated serving with data-parallel attention (Qwen3-235B FP4 +29%, FP8 +26%; Maverick FP4 -23%).** The
  perf-overview page queues 3,000 requests at 1000/1000, so no more than 375 per GPU are ever in flight; the
  model had filled memory (813 and 534 per GPU for Qwen3, 589 for Maverick) and predicted +44%, +32% and -26%.
  Held to the run's requests (`num_requests`, from the page's own table), Qwen3 comes within 30% and Maverick,
  too slow before, is further off: its miss is not the load (the FP4 experts' units correction above then took
  Maverick from -38% to -23% and Qwen3 FP4 from +17% to +29%). The attention-DP balance (0.5411) stretches prefill
  and decode steps alike; blog 10's figure is the mean per-iteration avg/max tokens of a whole in-flight-batching
  run, its imbalance in the iterations where some ranks run context and others generation (all in its first
  12,000 iterations; generation-only iterations after them balance), so it is neither a decode nor a prefill
  figure, and no prefill-only balance is published: left as is. That balance and the EP32 expert imbalance
  (TensorRT-LLM blog 4) are measured on DeepSeek; Qwen3's
  128-expert top-8 routing at EP8 has no published imbalance figure, so its experts are charged as balanced.
  Searched and not found: a measured max/mean routed-token load per rank of any Qwen3-MoE model at EP8. vLLM's
  and SGLang's PRs adding EPLB for Qwen3 (vLLM #20815, #20967; SGLang #6533; lmdeploy #3582) give end-to-end
  results only; vLLM's logged balancedness took its mean and max over layers instead of ranks until 2026 (vLLM
  #36304, #51784), so logs from before are not a rank imbalance; vLLM PR #50647 measures 1.069 max/mean rank
  load without EPLB at EP16 on Kimi K3 (another model and router); the LLEP paper (arXiv 2601.17111) and
  expert-activation profiles of Qwen3-235B (baa.ai) show per-expert skew without a per-rank figure; arXiv
  2604.23150 traces Qwen3-235B's expert activations (100k traces, 'variable expert load imbalance'), but only
  its abstract could be read, with no per-rank number. Nor was a kernel-level time of TensorRT-LLM's MoE at
  Qwen3's shapes found (PR #6470 times Qwen3-30B end to end only).
  The figures these points need: Qwen3-235B's max/mean tokens per rank at EP8 with static placement
  (TensorRT-LLM's MoE load-balancer statistics, or vLLM's corrected balancedness log), and TensorRT-LLM's FP4
  and FP8 grouped-GEMM times at 16 experts per rank (N 3,072 at K 4,096; N 4,096 at K 1,536).
  An audit of the Blackwell misses' breakdowns found no term charged that the setups do not run: the TP1 Llama
  points pay no collective, KV is FP8 where the sources say so, MTP only where published. It found the grouped
  experts reading the dense FP4 curve at one projection's weight size (23.8 ms of Maverick's step at 1.0 TB/s),
  corrected since: each grouped launch reads the weight-size sweep at all the experts it runs (above).
- **DeepSeek-R1 batch 1 on B200 with relaxed MTP acceptance (-15%).** With Blackwell's measured all-reduce
  latency (13 us, vLLM's pynccl benchmark at world size 2) the batch-1 points land at +11% (no MTP) and -8%
  (MTP 3); the relaxed-acceptance point runs TensorRT-LLM's fused all-reduce and a TP8/EP2 split whose faster
  kernels the catalog does not have. MTP Eagle's second and third draft passes run on one token per sequence
  rather than all four (TensorRT-LLM tech blog 2), and each pass's kernels pay the graph-replayed per-op floor
  as the model's own do: together the two MTP points moved from -6.3% and -29.7% to -7.8% and -30.8%. Reading
  the FP4 experts at their launch's weight size (above) took the three to +11.2%, +13.0% and -15.2%.
- **A setup that did not fit as published, until its engine's memory policy was read.** TensorRT-LLM v0.6's
  A100 LLaMA-7B batch of 60 at 128 + 2,048 tokens needs 68.4 GB of FP16 KV cache beside 13.5 GB of weights. The
  A100 holds 85.9 GB (nvidia-smi's 81920 MiB); the executor's default pool of 90% of what the weights leave
  (65.2 GB) holds 57 sequences, and the point was infeasible (-100%). But these rows are gptSessionBenchmark
  static batches, and GptSession sizes its KV cache to the batch (batch x maxBlocksPerSeq blocks, or non-paged
  buffers of batch x sequence length), with no free-memory fraction; with the cache sized so, the run fits and
  lands at -0.1%.
  SGLang's GB200 prefill instances, which did not fit before, offload weights to Grace memory as the post
  says; with that mechanism (the excess streams over NVLink-C2C behind each forward) they land at -5% and -7%.
  Chip capacities are the device's own report (nvidia-smi, rocm-smi, npu-smi), not the marketed decimal GB.
- **DeepSeek-R1 decode on H20 (Ant Group / SGLang: +14% to +22%; were +19% to +31%).** All five decode points
  were too fast together, the batch-48 one most (TPOT 51 ms against the 67 ms its 714 tokens/s per GPU imply),
  and at that batch the MLA core is the largest term: FP8 KV cache, so the core ran at the H20's FP8 peak times
  the efficiency the Step-3 paper's H20 layer gives (0.90), and that layer was measured with BF16 attention
  (FlashMLA; FlashMLA issue #30 measures BF16 FlashMLA on H20 at 120-130 TFLOPS too). An FP8 attention kernel
  does not double its BF16 twin: FlashAttention-3 reaches 740 TFLOPS in BF16 and close to 1.2 PFLOPS in FP8 on
  H100 (arXiv 2407.08608), 1.62x. 8-bit attention on Hopper now runs at the BF16 peak times that ratio
  (`fp8_attention_speedup`), which took the batch-48 point from +31% to +22%; elsewhere FP8-KV Hopper points
  moved by under 2 points. The H20's own FP8 MLA kernel (Ant's FlashMLA-FP8; FlashMLA PRs #54, #82 and #122
  publish theirs as plots or tables not readable here) is the measurement these points need.
- **FP8 attention on Blackwell (SGLang's GB200 FP4 decode +17.9% to +3.8%).** FlashAttention PR #2109 (FA4's
  FP8 forward on SM100) times FP8 and BF16 on the same shapes: 903.13 against 888.56 TFLOPS at head dim 64, 2 x
  8,192 tokens (1.013-1.030 over its five shapes), with FA4's exp2 emulation ("e2e softmax") off in both, as FP8
  runs it; the softmax, not the tensor cores, bounds both. 8-bit attention on Blackwell now runs at the BF16 peak
  x 1.016 instead of the FP8 peak, which moves only compute-bound cores (prefill, MLA decode at large batch; GQA
  decode reads its cache at the same rate). Moved, in-sample equal to out of sample: SGLang's GB200 FP4 decode
  +17.9% to +3.8% (batch 1,408, MLA with an FP8 cache); and worse: its FP4 prefill -4.3% to -7.7%, TensorRT-LLM B200
  70B FP4 20000/2000 -6.4% to -11.2%, GB200 405B FP4 5000/500 -10.9% to -12.2%, the other Blackwell 70B points
  and MLPerf B200/GB200 by 0.1-0.3 points; Qwen3-235B FP4 +29.3% to +28.4%. The ratio is measured at head dim 64
  only; at 128, and in MLA (576/512), the softmax weighs less per FLOP and FP8 should gain more, so for those
  it is likely a lower bound; B300/GB300 (SM103, twice the exponential rate) share the key unmeasured. Searched,
  not usable: the same PR's head-dim-128 rows and its first BF16-with-e2e comparison (0.95-1.15x per a reviewer;
  not readable here), FlashAttention PR #2905 (a dedicated FP8 head-dim-256 kernel, 1.2-1.9x over the generic
  FP8 one, BF16 rows not readable), Meta's TLX MXFP8 attention on B200 (triton PR #3621: table not readable;
  block-scaled MXFP8, not the per-tensor FP8 the engines run), cuDNN frontend's attention benchmarks (B200 and
  GB200 FP8-KV rows fail or run a generation path at 1-17 TFLOPS), SGLang PR #8638 (trtllm-gen MLA FP8 vs BF16
  end to end only). MI300X: no FP8-vs-BF16 FMHA kernel pair found (AITER, CK-tile, FlyDSL tables are BF16 or
  gfx950); CDNA3 keeps the peaks' 2, and its FP8-KV MLPerf points moved under 0.3 points in a trial of 1.02.
- **DeepSeek's online prefill (+40% in-sample)** is a 24-hour service average after 56.3% on-disk cache hits,
  under varying load; the model predicts a saturated step. It, RTP-LLM's and SGLang's EP32 prefill points are
  costed with dispatch and combine in series with compute (`overlap` off: 734 ms of a 1,552 ms forward here),
  although DeepSeek and SGLang overlap them with two micro-batches; overlapped, the three would be +88% to +165%.
  So the prefill compute (or the all-to-all time) lacks a mechanism that the serial communication hides; the
  prompt length (the published mean KV length per output token, 4,989) is an assumption as well. Rechecked term
  by term against hand arithmetic at 16,384 tokens per GPU and 4K prompts (RTP-LLM's point), per layer: the MLA
  projections (187 M weights, kv_b applied to every token for the MHA-form prefill) 6.1 TFLOP at 1.15 PFLOPS (58%
  of the FP8 peak, DeepGEMM's dense rows); the attention core (128 heads, q.k 192 and p.v 128 wide, causal) 2.75
  TFLOP at FlashAttention-3's 740 TFLOPS, which is its best BF16 figure, so if anything fast for causal 1K-4K;
  routed experts (131,072 token-expert pairs, 16,384 rows per expert) at the mean of DeepGEMM's contiguous
  grouped rows at M 4096-8192 (1,346 and 1,214 TFLOPS); communication 16,384 tokens x 2.70 remote nodes x 21.5 kB
  (FP8 out, BF16 back) = 951 MB over 40 GB/s = 23.8 ms. No units bug: DeepEP's normal-kernel table (EP32 58/57
  GB/s) is a logical bandwidth, its tests/test_internode.py counting (token, node) pairs with the token's own node
  included, so per remote byte it is 58 x 3/4 = 43.5 GB/s dispatch and 42.8 GB/s combine, within 9% of the
  catalogued 40. Each term sits on its benchmark; the model's compute (1.33 s a forward) and communication (1.38
  s) against measured forwards of 2.6 s (SGLang 4K) and 3.1 s (RTP-LLM) leave an overlapped model 1.9-2.2x too
  fast. Mechanisms absent and sized (not entered, no measurement of them at these shapes): DeepEP's normal
  kernels hold 20 of the 132 SMs while they run (deep_ep/buffer.py `num_sms = 20`), slowing overlapped compute by
  up to 1.18x; the memory-bound kernels around the grouped GEMM (permute and un-permute of 131,072 rows, about
  1.9 ms a layer at 3 TB/s) and the MHA-form K/V expansion (128 x 320 x 2 bytes per token written and read, 0.9
  ms) add some 13%. Together they reach about 1.8 s, still short of the measured forwards, so overlap stays off
  until the remainder is found. DeepSeek's profile-data prefill trace (16K tokens per GPU, EP32, two
  micro-batches), which would time each kernel, is not in the stored snapshot (prefill.json absent, the figure a
  JPEG not readable here). SGLang's blog (lm-sys.github.io blog/2025-05-05-large-scale-ep.md, 'Ablation Study:
  Two-batch Overlap' and 'Profile Results') measures what the model lacks: two-batch overlap adds 27-35% to
  prefill throughput at the same tokens per device, where ideal overlap gives 1.96x in the model, and the
  all-to-all reaches its unit-test time only with overlap off. So the engine without overlap takes some 3.4 s for
  16,384 tokens (50,302 tok/s per node / 1.3), of which the unit-test all-to-all (the model's 1.38 s) leaves
  about 2.0 s of compute against the model's 1.33 s: the gap is in compute or in waiting on the busiest rank, not
  in the all-to-all's bytes. The same page gives DeepSeek's profile at 62,713 tok/s per node (2.09 s a forward,
  routing simulated perfectly balanced) and SGLang's with simulated perfect EPLB at 59,337; SGLang's default
  expert distribution takes 18% longer than that, where the model's EPLB imbalance (TensorRT-LLM's 1.109
  max/mean, applied to the routed GEMMs only) adds 57 ms, 2% of the serial step. Waiting on the busiest rank
  also stretches dispatch and combine, but their RDMA leg is loaded per node, not per rank, and no per-node ratio
  is measured, so it is not entered. DeepSeek's profile decode (-30% out of sample) loses DeepEP's measured
  kernels and falls back to bytes over the NICs.
- **TensorRT-LLM v0.5's 128-token TTFT on A100 (+60%)**: a 16 ms first token where the model's prefill and
  eager launches give 10 ms. The table's rows are batch 1 (its reproduction commands pass batch 64 or 32, but
  at batch 64 a 128-token prefill of LLaMA 7B alone would take some 350 ms on an A100) and time
  gptSessionBenchmark's whole `generate` call with one output token: buffer reshape, the decoder's newBatch,
  the context step, one sampling step and finalizeOutputIds (gptSession.cpp at 027cd518). The table's rows not
  entered as points show the same: at 128 tokens A100 70B TP4 47 ms against the model's 28, H100 FP8 LLaMA 7B 7
  against 5.1, 70B TP4 26 against 17.5 (+38% to +68%), while at 2,048 tokens all four land within 8-27%; the
  absolute gap is about the same at both lengths (A100 7B 6 and 10 ms, 70B TP4 19 and 23 ms, H100 70B 8.5 and 8.4
  ms). So a per-call time that grows with the model's depth, not with tokens, is missing: per-request setup of
  GptSession and TensorRT's context-phase enqueue (shape binding, plugin setup per layer), or A100 GEMMs at the
  ridge point (M 128; the Ampere path has no GEMM benchmark and takes the scalar 0.77 / 0.896). Neither has a
  published measurement we found.

### Held-out deployments (issue 14)

Two sources were added as a test of the planner on deployments it was never developed beside: GPUStack's
performance lab (vLLM bench serve runs of Qwen3-8B on one Ascend 910B and one H100, and of Qwen3-235B on
H100) and the MI300X latency table of ROCm's vLLM dev-docker (Llama 3.1 70B and 405B FP8 at TP8, batch 1 to
128). Their 30 points were entered as published and predicted before any model change; they took the medians
from 14.8% to 20.6% in-sample and 21.8% out of sample. 11 of the 30 land within 30%: Qwen3-8B on H100 (-1%,
+8% TPOT at 4 sequences), Llama 405B on MI300X (-28% to +24%), 70B at 128 sequences and 2K prompts (+29%),
and two of the 910B's prompt-heavy runs (+17%, +26%).
The misses, and what we found about their mechanisms (after the per-call floors and host dispatch of the
next paragraphs and the 910B2 flash-attention figure, the medians are 16.4% in-sample and 17.1% out of
sample, 71 and 70 of 101 within 30%):

- **Ascend 910B, Qwen3-8B on one card: small-batch decode too fast (vLLM-Ascend BF16 +55% TPOT at 4 sequences,
  MindIE W8A8 +217%).** The model's device work is 11.7 ms (BF16 weights read at 1.6 TB/s: 10.2 ms); the card
  measures 47.3 ms, where the same workload on an H100 lands at -1%. The mechanism is host-side dispatch of each
  operator: vLLM-Ascend's default graph mode captures the layers piecewise and issues attention eagerly, and a
  profile in vLLM-Ascend issue #9404 measures a 910B3 decode layer at 832 us of which the NPU idles 591 us (59.4 us
  of host dispatch per op call in modelchip's op list). With that figure a step takes at least its host's dispatch
  (`host_dispatch_wait`), which took the vLLM point from +304% to +55%. The figure is one user's profile of a MoE
  model at TP2 on vLLM-Ascend 0.18 (the run here is 0.9.1 on a dense model); a dispatch measurement on the version
  and model served would settle the remaining gap. MindIE runs its own graph engine, whose per-operator host time is
  not published, so its W8A8 point pays none (+304%, now +217% after the checkpoint correction below). The W8A8
  checkpoint (vllm-ascend/Qwen3-8B-W8A8) was read as INT8 throughout; msModelSlim's W8A8 defaults keep the LM head
  and every down_proj in float (its Qwen example's parameter table: disable_last_linear True, disable_names all
  down_proj), and the checkpoint's one weight file lists at 11G (vLLM-Ascend issue #5812), which fits that fallback
  (11.25 GB) and not all-INT8 linear layers (9.44 GB with a BF16 embedding and LM head). Those layers now stream and
  compute in BF16 (`ffn_down_weight`, `lm_head_weight`): the batch-4 step reads 10.0 GB, not 7.6, and the two MindIE
  throughput points moved from +12% and +29% to -2% and +9%. The ShareGPT point was also entered with the vLLM run's
  request shape (100 requests of 233 / 221 tokens); MindIE's run sent 1,000 (217 / 202). Its peak output rate (200
  tokens/s at 4 in flight) puts MindIE's fastest steps at 20 ms against the model's 8: some 12-17 ms a step,
  whatever the batch, that the model does not have. MindIE runs each step synchronously (its asynchronous-scheduling
  guide: CPU data preparation, NPU inference, CPU data return, in turn; overlap is opt-in,
  MINDIE_ASYNC_SCHEDULING_ENABLE), and msprof's MindIE case (MindStudio practical cases, 'framework scheduling')
  measures the service's decode step at 66 ms against 36 ms for the model alone at 300 concurrent requests: that
  host time, not a batch-4 figure of it, is what this point lacks. vLLM-Ascend 0.9.1 ran this graph mode (ACL
  graphs, piecewise) by default too, per its graph-mode guide, so the figure's mode matches; MindIE's W8A8 point
  needs MindIE's own host or graph-launch time per operator or step, which neither its tuning guide nor its issues
  give. The 32K-prompt run (+158%, now +114%) is prefill-bound: its attention now runs at torch_npu's measured
  flash-attention utilization on a 910B2 (42.6% at 32K tokens, pto-isa's sweep), and the rest of the gap (the model
  takes 47 s per cohort of nine prompts, 42 s of it prefill; the run about 100 s) is not explained by a measurement
  we have. The run did not chunk its prompts. vLLM-Ascend v0.9.1 (platform.py, check_and_update_config, at tag
  v0.9.1) turns chunked prefill off for every model without MLA, "as the performance of operators supporting this
  feature is currently suboptimal", switches on its own AscendScheduler (core/scheduler.py: prefill first; decode
  steps only when no prefill is scheduled) and raises max_num_batched_tokens to max_model_len (40,960 for
  Qwen3-8B), so each 32,000-token prompt is prefilled whole, alone in its step, through torch_npu's
  _npu_flash_attention (attention_v1.py, PrefillNoCache) with a dense causal mask of the step's longest prompt,
  sliced from a max_model_len-square table kept on the CPU and copied to the device every prefill step
  (model_runner_v1.py, AttentionMaskBuilder.get_attn_mask: 2.0 GB at 32,000 tokens in BF16). The run's own
  figures say the same: median inter-token latency 48.5 ms and P99 59 ms against a mean of 341 ms, so almost every
  gap is a pure decode step and each request waits once, behind the other prompts' prefills; its peak of 147
  output tokens/s at 48.5 ms a step is about seven requests decoding together. That is the model's cohort (the
  in-flight requests prefilled, then decoded together; the model fits nine, whose decode step it puts at 42.9 ms,
  35.9 ms at seven), so the schedule is not what is missing, and the split-fuse kernel is not what this run ran.
  With decode steps at the measured 48.5 ms, the run's 1,110 s leave about 10.4 s of prefill per prompt where
  the model takes 4.7 s (2.1 s of projections and FFN, 2.5 s of attention at 42.6% of peak). The figures this
  point needs: _npu_flash_attention's time on a 910B for one 32,000-token prompt (32 query and 8 KV heads of
  128) with a dense mask, and the host time of building and copying that mask per step; none was found.
  Searched again and not used: vLLM-Ascend PR #2962 and RFC #3610 (chunked prefill moves from the split-fuse kernel
  to npu_fused_infer_attention_score because the former is "suboptimal"; no time given), SGLang PR #15518 (the same
  swap for mixed chunks on Ascend; its before and after are images), SGLang PR #34387 (fused infer attention on an
  Ascend 950 with 3,968 prefill tokens and 23 decodes against 8,192 keys, 4,360 to 3,949 us per call, quoting
  vLLM-Ascend PR #11948: another chip and another kernel). For MindIE's per-operator host or graph-launch time,
  nothing new: Ascend's msprof-analyze advisor flags host-bound operator sequences by a threshold and gives no time.
  Per-operator device times at small-batch decode on a 910B were searched for (GEMM and QuantBatchMatmul at M 1-8,
  activation quant, norms, RoPE, paged attention, the per-kernel floor) and none was found that can enter the
  catalog: pypto-lib issue #465 times a Qwen3-14B decode layer on a 910B at batch 16 against ASC small operators,
  but only its methodology is readable; pypto-lib issue #1054's msprof table (QuantBatchMatmulV3 at M 1 on a 1,024 x
  4,096 weight, 14.83 us a call) is an Ascend 950PR; vLLM-Ascend PR #15902's npu_rms_norm at one token (24.6 us,
  13.8 us fused, eager) is an Ascend 950; vLLM-Ascend PR #6274 (RMSNorm plus DynamicQuant, 22.8 to 16.9 us) names
  no chip or shape; pto-isa's GEMM and flash-attention sweeps are large-M or A3 target bands. The davinci model
  has no per-call GEMM or small-kernel floor for want of such a figure. The W8A8 structure was checked on the
  vLLM-Ascend side: at v0.9.1 (quantization/w8a8.py) each quantized linear is a static per-tensor npu_quantize
  then npu_quant_matmul with a per-channel dequant scale, so the INT8 layers add one quantize kernel per linear
  (three a layer with down_proj in BF16) that modelchip's op list does not count: no device time while davinci
  has no per-kernel floor, host dispatch only for a vLLM-Ascend W8A8 run, of which the catalog has none. What
  MindIE's ATB graph runs per layer was not found in public code.
  The 128-in / 4-out burst of 1,000 requests (+148%) is host work per request (tokenising, scheduling) for which no
  measurement was found (see "Bursts of short requests" below); its schedule is the model's too (the AscendScheduler
  admits up to max_num_seqs 256 prompts into one 32,768-token prefill step, then decodes them). The 2K and 4K
  prompt runs land at +12% to +28%.
- **MI300X at TP8: ROCm's docker 70B +14% and +16% at one sequence, +42% and +39% at 16, +58% and +54% at
  128; 405B +4% to +23%; Oracle's 405B +21% to +35%.** Two per-call floors measured on MI300X kernels are
  charged per call: a matmul takes at least 10.7 us, the fastest tuned FP8 kernel for 70B's TP8 QKV shard
  (N 1,280, K 8,192) from M = 1 to 64 in AITER PR #1092, against 2.0 us of weight streaming
  (`gemm_call_floor`: 70B's QKV and O shards wait on it, 405B's four-times-larger shards do not), and a
  non-matmul kernel at least 2.7 us, a 16-row RMSNorm on gfx942 in AITER PR #3747 (`small_kernel_floor`: 643
  such calls in a 70B step, 1.7 ms at batch 1), charged on two groups: the 80 attention calls, which grow
  with batch and context and pass the floor first, and the 563 token-sized ones (norms, rotary, KV writes,
  activation), so that attention above the floor no longer hides them (70B at 128 sequences: 1.1 ms more a
  step, +69% to +56% before the prefix-cache correction below; MLPerf v5.1's MI300X Interactive +42% to +35%,
  MI325X's -18% to -21%). Both are AMD kernel benchmarks, not the ROCm docker's end-to-end table, so
  leave-one-source-out keeps them. Since the FP8 GEMM tables were split by weight format
  (MLPerf, below), these steps run their per-channel FP8 matmuls at the rowwise and hipBLASLt kernels'
  efficiency, not the block-scaled kernel's: that made every TP8 point faster (70B at 128 sequences +114%,
  Oracle's 405B at 256 +50%). Their all-reduces now take RCCL's measured time on 8 MI300X (AMD's rccl-tests
  run in the ROCm blog on RCCL and xGMI: 35.0 us for 2 MiB with graph capture, where the link model gave
  17.4 us; 10.3 us for 256 KiB against 8.5 us), which brought them to the figures above. 405B's earlier small
  errors (-28% to +18%) owed something to the block-scaled efficiency; it is now too fast at TP8 as well.
  The docker's timed runs reuse their warm-up's prompts from vLLM V1's prefix cache, and its points are now
  predicted so (`cached_prefix`: all but the last 16-token block; the decode steps still read the whole
  prompt's KV cache).
  benchmark_latency builds its random prompts once and runs them in every warm-up and timed iteration, the
  README names the v0.8.5 scripts, which predate vLLM PR #18639 (May 2025, turning the prefix cache off in that
  script because 'V1 enables prefix caching by default which skews the latency numbers'), and the table itself
  shows it: 405B at 128 sequences took 8.4 s longer with 2,048-token prompts than with 128-token ones, where
  prefilling the 245,760 extra prompt tokens needs 2 x 405B x 245,760 = 2.0e17 FLOPs, 9.5 s at eight MI300Xs'
  full FP8 peak; at one sequence the 2,048-token runs were no slower (48.36 against 48.45 s). This is a
  correction of the points' setup, not a new constant: it took the 2,048-token points from +15%, +30%, +22%
  (70B) and +4%, +7%, -12% (405B) to the figures above, the source's median from 16.7% to 20.6% and the overall
  medians from 16.0% and 17.0% to 17.1% and 17.7% (with the Blackwell FP4 curve above, merged beside it:
  16.0% and 17.0%, 94 and 93 of 121 within 30%). With the prefill out of the way the miss has one shape.
  The model's decode step falls short of the measured one (the batch time over 2,048 steps, less the model's
  prefill) by 1.0 ms at one sequence for 70B and 405B alike, 3.1-3.2 ms (70B) and 4.4-4.5 ms (405B) at 16,
  8.4-9.0 ms and 10.6-11.1 ms at 128, the same within 0.6 ms at 128- and 2,048-token prompts. It does not grow
  with context, so the decode attention is not what is missing (a paged-attention kernel time with one KV head
  per GPU would not move these points); it grows with the batch, but only 1.0-1.4 times from 70B to 405B
  (whose weights per GPU are 5.8 times and layers 1.6 times 70B's), so neither weight streaming nor a
  per-layer cost accounts for it alone. What fits is a per-step cost growing with the sequences in the batch
  (vLLM V1's scheduler, input preparation, sampling and output handling, which v0.10 does not overlap with the
  GPU) plus a per-all-reduce cost beyond RCCL's at 256 KiB-4 MiB (vLLM v0.10 runs its own custom all-reduce
  below 8 MiB). The figures these points need: (1) vLLM's custom all-reduce on 8 MI300X at 256 KiB-4 MiB. Found
  and not used: QuickReduce's README (mk1-project/quickreduce, 8 x MI300X, ROCm 6.2) times RCCL at 18.0 us for
  256 KiB and 34.1 us for 2 MiB, as the catalog's rccl-tests rows do, and its own QR-FP16 kernel at 16.4 and
  27.9 us, a different kernel, which vLLM v0.10 runs only with VLLM_ROCM_QUICK_REDUCE_QUANTIZATION set; vLLM
  PR #39080's TP8 custom all-reduce table and AITER PR #3229's TP8 table are on MI355X; the TP8 timing of vLLM
  PR #19094's comment is a pasted spreadsheet we could not read (TP4 is in the catalog: 36.6 us for 2 MiB).
  (2) vLLM V1's whole per-step host time at TP8 against the batch: vLLM PR #46112 times one part,
  Scheduler.update_from_output, at 0.142 ms for 128 requests on a later vLLM (too small a part to carry);
  the vLLM V0 RFC #6854 shows 4-ms GPU bubbles a decode step in a profile image whose setup the text does not
  give (Oracle's 2024 runs, on V0, miss by 4.8 ms at one sequence and 36 ms at 256). A second search for the
  GPU idle time between two synchronous decode steps against the batch found no table on any version or
  chip these points ran: vLLM issue #10634 (Nov 2024, V1 as it stood after PR #9826, AsyncLLM) gives one
  figure, "about 5-6 ms" between two decodes for Llama2-7b at batch 256 on ShareGPT, on a GPU it does not
  name, and puts it on GIL contention between the scheduler and the IPC threads of that early V1; PR #11133
  (Dec 2024, closed unmerged) cut that case to 150-170 us by scheduling one step ahead. RFC #6913's table of
  `_process_model_outputs` time (V0, Llama3-70B on 4 x H100 FP8: 0.2 ms at batch 1, 3.4 ms at 32) prints 0.2 ms
  at 1,024 and says its numbers are being redone; V0's async output processor (PR #7049, v0.6.0) then took that
  part off the GPU's path anyway. vLLM's v0.6.0 blog gives shares of a Llama 3 8B step (API server 33%,
  scheduling 29%) without the batch. vLLM's async scheduling (PR #19970, June 2025, opt-in `--async-scheduling`;
  default only from PR #27614, tracked in issue #27679 of Oct 2025, after v0.11.0) and PR #23569 (overlapping
  input preparation too, "expected 5-10%") report no per-batch gap either. So vLLM v0.10's synchronous V1 on
  MI300X, v0.11's on H100 (GPUStack) and Oracle's October 2024 V0 on MI300X stay without a host term: one batch
  size on an unnamed GPU, from a pre-release V1 whose gap the thread put on its threads' GIL contention, would
  not carry to them. Two things bound such a term here: a per-step host cost is the same for 70B and 405B at one
  TP8 and batch, so of the gaps above at most 70B's (1.0, 3.1-3.2 and 8.4-9.0 ms at 1, 16 and 128 sequences)
  could be host time, and 405B's larger gaps need something per layer besides; and GPUStack's H100 Qwen3-8B
  run at 4 concurrent requests (v0.11, synchronous) lands at -1.1% without one (1 ms a step more: -13%).
  (3) FP8 GEMM times at
  M 16-128 for 70B's TP8 shards on MI300X with the docker's kernels (the catalog has 405B's shards at M 1-32).
  An audit of the docker's release (ROCm/vllm commit 340ea86, named in the README's manifest) found no setup
  misread: AITER is off by default (VLLM_ROCM_USE_AITER=0), so the per-tensor Quark checkpoints run vLLM's
  skinny wvSplitKQ kernel at one sequence and hipBLASLt (torch._scaled_mm) from two, not AITER's rowwise kernel
  (whose table the model takes beside hipBLASLt's; with hipBLASLt's alone, which stops at 32 rows, these points
  come out faster still: 70B at 128 sequences +76%, Oracle's 405B at 256 +80%);
  decode attention is vLLM's custom ROCm paged attention (256-token partitions, TritonAttentionBackend with
  VLLM_V1_USE_PREFILL_DECODE_ATTENTION); `auto` KV stays 16-bit (this fork does not take the checkpoint's FP8 KV
  scheme). Taking the table's whole batch sweep (1 to 128 sequences, the catalog holds 1, 16 and 128) against the
  model: the gap is about 1.0 ms a step at one sequence for both models (0.95-1.16 ms), and above it nearly the
  same per layer in both at the same batch (after that 1.0 ms, 70B against 405B over both prompt lengths: 6-9 and
  5-10 us per layer at 4 sequences, 13-15 and 13-14 at 8, 26-27 and 27-28 at 16, 62-64 and 61-65 at 64; 33-34
  against 50 at 32 and 92-100 against 76-80 at 128), and within 0.6 ms of itself at 128- and 2,048-token prompts
  (the model's context scaling of the attention holds). Counted per step instead, 405B's gap is 1.3-2.0 times
  70B's.
  Per layer, what 70B and 405B share at TP8 is the attention side (8 query heads over one KV head of 128, whatever
  the hidden size): rotary, the KV-cache write, the paged-attention kernel and its partition reduce. So the figure
  most wanted is that kernel group's time per layer on MI300X at 16-128 sequences and 1-3K context (the catalog
  has no decode-attention measurement on cdna3; the model's attention core is 2-6 us per layer at 16
  sequences). Found and not used: AITER PR #4794 (its pa_fwd_asm runs one workgroup per KV head and sequence,
  169 us for one 32K sequence, on gfx950 and another kernel), TLX PR #2040 (AITER's paged decode on gfx950),
  ROCm/triton PR #718 (a Triton decode kernel, FP8 cache, 6 KV heads), vLLM PR #33955 (times this very kernel on
  MI300X with benchmark_paged_attention.py, but only at 256 tokens or fewer, one partition, where it drops the
  reduce kernel, "~10 us" of launch by its own estimate; its result tables could not be read, and it was closed
  unmerged), AITER PR #2039 (its MLA decode kernels on MI300: 15.5 us for one sequence and 20.6 us for 128 at 21
  tokens of context; another kernel and shape, 128 query heads over a 576-wide latent, whose growth from 1 to 128
  sequences, 5 us, is under a tenth of the 61-100 us per layer these points miss by at 64-128). So the core stays
  the KV read at efficiency.toml's default 84.1% of bandwidth (kernels.toml's one cdna3 attention figure is AITER's
  prefill) and at least the 2.7 us small_kernel_floor. Not found: SemiAnalysis's December 2024
  MI300X collective and bandwidth figures in any readable form.
- **Qwen3-235B on H100 with vLLM tensor parallelism: BF16 TP8 +15% to +29%, FP8 TP4 +33% to +62% at 2K to 32K
  prompts.** These runs are prefill-bound, and the two instances run different expert kernels. The BF16 TP8 instance
  (192 of each expert's 1,536 columns per GPU) runs vLLM's Triton fused-MoE kernel, which now has a measured table
  (`[[fused_moe]]` in kernels.toml, cost/kernel_model.fused_moe_efficiency): a whole Triton fused-MoE layer timed at 1
  to 4,096 tokens on an H200 in BF16 (vLLM PR #44818, Gemma4's E 128, top-8, K 2,816, N 704, tuned configs), turned
  into a roofline efficiency per rows per expert: 0.80 at 8 rows, 0.72 at 32, 0.44 at 128, 0.33 at 256 (312-344 TFLOPS
  where a dense BF16 GEMM runs near 700). Experts split tensor-parallel on Hopper in BF16 take it in place of the
  scalar 77% (the `moe` term); a vLLM prefill chunk on an H100 (8,192 tokens, 512 rows per expert) lies past the last
  row, so the last efficiency holds, as for every table. It took the three prompt-heavy BF16 points from +38%, +35%,
  +58% to +13%, +14%, +28% (and the 128-token burst from +284% to +184%), in-sample and out of sample alike (the
  figure is vLLM's kernel benchmark, not GPUStack's); no other point moves, since no other point splits BF16 experts
  on Hopper. Its shape is wider than Qwen3-235B's 192-column shard, and a narrower shard runs no faster per row, so
  the figure is a lower bound on the time there. The FP8 TP4 instance holds 384 columns in 128-blocks. vLLM v0.11 runs
  block-FP8 experts on DeepGEMM's grouped GEMM only where the DeepGEMM package is installed (VLLM_USE_DEEP_GEMM=1 is
  the default, but vLLM's wheel does not depend on it), and GPUStack's runner image for vLLM 0.11.0 (gpustack/runner
  pack/cuda/Dockerfile at commit 01961f47, VLLM_VERSION=0.11.0) installs vLLM, FlashInfer and LMCache and no DeepGEMM.
  Had it been installed, these experts would still not have run it: in vLLM 0.11.0's source (the PyPI sdist, sha256
  f435a64c...) fused_moe/deep_gemm_moe.py `_valid_deep_gemm` returns False for N <= 512 (N: the per-rank intermediate
  width, 384 here, 192 at TP8; "fallback to triton"), and fused_experts takes DeepGEMM only where that check passes or
  E8M0 scales are on (off on Hopper by default, VLLM_USE_DEEP_GEMM_E8M0_HOPPER=0); FlashInfer's FP8 MoE is opt-in
  (VLLM_USE_FLASHINFER_MOE_FP8=0) and the CUTLASS block-scaled grouped GEMM is Blackwell-only. So these experts ran
  vLLM's Triton fused-MoE kernel in block-FP8 (w8a8, 128 x 128 scales), and on the default config: 0.11.0 ships tuned
  E=128,N=384 block-FP8 configs for H200, H20, H20-3e, B200, GB200 and MI300X but none for H100, so get_default_config
  applies (BLOCK_SIZE_M 64, N 128, K 128, GROUP_SIZE_M 32, 4 warps, 3 stages). No time of that kernel at prefill sizes
  was found. The model keeps the catalog's DeepGEMM grouped table for them (0.55-0.65 of FP8 peak at 1,024-22,000 rows
  per expert): the faster kernel, so these points err fast. At decode sizes the table agrees with the one Triton FP8
  layer timed at Qwen3-235B's own expert shape: SGLang PR #11730 (E 128, N 192, K 4,096, per-tensor FP8 on an H200,
  default config) runs the layer in 66.9, 92.4 and 125 us at 8, 16 and 32 tokens, 0.38-0.44 of its weight-streaming
  roofline, where the table gives 0.43 below 16 rows per expert. What differs is the compute-bound prefill kernel. As
  a sensitivity only (not a figure, not entered): with prefill experts at the BF16 Triton layer's measured 312-344
  TFLOPS (vLLM PR #44818) the 32K, 4K and 2K points would land at +9%, -2% and +10% and the burst at +36%. The figure
  they need: vLLM v0.11's benchmark_moe.py without DeepGEMM for E=128, N=384, block-FP8 [128, 128] on an H100 SXM at
  1K-16K tokens, or any block-FP8 Triton fused-MoE layer timed at 256 or more rows per expert on Hopper. Found and not
  used for FP8: vLLM PR #13932 (DeepGEMM and Triton block-FP8 fused-MoE layers on an H100 at DeepSeek's E 256, K
  7,168, shards 512 and 256: 1.7-5.2 ms at 128-2,048 tokens, at most 64-96 rows per expert, 0.16-0.33 of the bandwidth
  roofline; early-2025 configs, and carried to 1,000 rows a memory-bound efficiency would cross the roofline ridge,
  about 300 rows for FP8 on an H100), PR #44830 (E 512, N 128, top-10, K 2,048 block-FP8 on H100, at most 80 rows per
  expert, weight-bound there, so it would not carry to prefill rows; only its first row, 29.45 us at one token, is in
  the text we could read, and its 'baseline' is June 2026's default, after PR #34846 (February 2026) replaced v0.11's
  block-FP8 default with batch-aware tiles: not v0.11's kernel state), PR #34846's benchmark_moe_defaults.py (times
  v0.11's block-FP8 default as 'Old' on an H100 at DeepSeek-V3 TP4/TP8 and Qwen3-Next TP2 shapes, 1-4,096 tokens, at
  most 128 rows per expert; only its Mixtral header could be read), PR #45142 (E 512 block-FP8 on H20-3e, 64-1,024
  tokens), SGLang PR #34795
  (the default block-FP8 Triton config against a tuned one on H20, E 512, N 256; nothing past its table header could
  be read), PRs #53710 and #53819 (L40S), PR #24700 (Qwen3-30B, E 128, N 768, per-tensor FP8 on H100, September 2025:
  0.11 of roofline at 4,096 tokens, another quantization with its own default config), PR #54500 (E 192 on H20,
  per-tensor), PR #29346 (vLLM turns DeepGEMM MoE off by default at TP8 from November 2025, after v0.11), vLLM PR
  #13917, SGLang PR #3893 and DeepGEMM PR #25 (dense block-FP8 GEMMs, not MoE layers), DeepGEMM issue #39 (its
  maintainers: the kernel underperforms at small K, having no split-K or stream-K, which would touch the 384-deep down
  projection had DeepGEMM run; no times at that K), vLLM recipes PR #112 (MiniMax-M2 on H100 served twice as fast
  without DeepGEMM: end-to-end, another model), VeOmni PR #460 (another Triton kernel), vLLM PR #19983 (block-FP8
  CUTLASS MoE against Triton on Hopper, as ratios, at 64 tokens and E 8), SGLang PR #5694 (block-FP8 Triton
  fused_experts at DeepSeek's shape, batch 1 to 8 in the text we could read; #6916 repeats it on B200), vLLM PR #39331
  (DeepGEMM against Triton on an H100 NVL for E 256: end-to-end latency, not kernel times) and SGLang PR #25659 (an
  NCU profile at 4,096 tokens on H20). For BF16 the figure wanted is the same benchmark at E=128, N=192 itself.
- **Bursts of short requests: 128 in / 4 out, 1,000 requests at once (H100 +153% FP8 TP4, +189% BF16 TP8; 910B
  +148%).** Each H100 run is one cohort, whose device work the model puts at 3.1 s (TP8, since the fused-MoE table)
  and 2.4 s (TP4); the runs take 8.83 s and 6.11 s, and their published first-token times are bunched late (mean
  7.0 s, P99 8.7 s; mean 5.6 s, P99 5.8 s), where device-bound admission would spread them over the prefill chunks.
  vLLM v0.11's scheduler prefills these prompts in chunks (8,192 tokens a step at TP8, 16,384 at TP4) with the
  earlier prompts' decodes beside them, not as one cohort; priced chunk by chunk the model's prefill grows by 4%
  and 8% (0.13 s and 0.19 s per run), far short of the gaps, so the schedule is not what is missing.
  That points at host work per request that the model does not charge: the API server's chat template,
  tokenisation, request and stream handling, and the scheduler. It is not one serial per-request time of vLLM
  v0.11's single API-server process, whichever way it is charged. As a bound (a burst of N requests admitted no
  faster than N times it) the TP8 run needs at least 8.98 ms per request (8.83 s over 984 requests), while the TP4
  run, on the same engine version and tokenizer, finished its 984 requests in 6.11 s, which caps any serial time at
  6.21 ms. Added to the device work, they leave 5.9 and 3.8 ms per request. Part of each gap is the prefill
  shortfall the same instance shows on its prompt-heavy runs: with the device time scaled by the 2,000-token runs'
  errors (+28% TP8, +62% TP4), 5.0 and 2.2 ms per request remain, still not one figure. The 910B run (vLLM-Ascend
  0.9.1 on its own host) leaves 13.5 ms per request (22.6 s for 1,000 requests against 9.1 s of device work). A
  term for it would touch only GPUStack's runs through `vllm serve`: the catalog's other vLLM points (ROCm's docker
  table and Oracle's, both benchmark_latency, and AMD's MLPerf harness) drive the engine without its OpenAI API
  server. No mechanism-level measurement of vLLM V1's per-request host time was found. Found and not used: vLLM's
  v0.6.0 performance blog (API server 33% and scheduling 29% of a Llama 3 8B step on one H100: a V0 engine's shares
  at one load, profiled before v0.6.0 gave the API server a process of its own); vLLM PR #818 (V0 tokenizer share,
  2023); PR #12287 (V1 frontend fixes, end-to-end req/s only); tpu-inference PR #2123 and SGLang issue #6553 (the
  single API-server or tokenizer process saturates, no figure); pegainfer PR #267 (145 ms of frontend time at 16
  concurrent requests behind a simulated engine: a latency under a different engine, not a serial time per
  request); chat-template render benchmarks of other implementations (Go, Rust, Swift). Searched again and not
  used: vLLM PR #17546, which added `--api-server-count` (its readable benchmark is Llama-3.2-1B on ShareGPT at 120
  requests/s on two A100s at DP 2, before and after, judged by TTFT: ShareGPT-length streams, a v0.9-era build, and
  no single-server saturation rate for short requests); PR #21139 (12-15 ms of preprocessing per request with 96 in
  flight behind an internal frontend: a latency under load, queueing included, model and version unstated); issue
  #25301 (one tokenizer thread per API server, no figure); issue #30084 (pure DP8 on H200 scaling about 4x under
  v0.11.2 at 128 in / 128 out; its figures are an image and the cause is not established); vllm-project/speculators
  PR #1013 (render-endpoint throughput per API-server process on vLLM 0.27.1: chat template and tokenisation
  without an engine or streams, on its data-preparation prompts, and its table is cut off in the text we could
  read); Dynamo PRs #5544 and #6437 (vLLM's pre- and post-processing inside Dynamo's frontend, GIL-bound; #6437
  gives tokens/s at one load on an unnamed machine); Megatron-LM PR #6223 and SGLang PR #8964 / issue #29367 (other
  frontends); vLLM-Ascend's optimization-and-tuning guide (its serving benchmark runs at one request per second,
  results in an image); vLLM PR #43469 (a mock engine behind the Python frontend: 806.77 requests/s for 32 in /
  512 out at 1,024 in flight on GB200 at DP 4, a 2026 build, 512 streamed tokens a request, API-server count not
  given); PR #23000 (10,000 embedding requests of 512 tokens in 24.1 s, 414.91 requests/s: no chat template,
  no stream, GPU unstated) and issue #22941 (more API servers raise embedding throughput; its table was not
  readable). The figures needed are unchanged: the request rate at which one vLLM v0.11 API server
  saturates on streaming chat requests of 128 tokens with 4 outputs against an engine whose steps are negligible
  (or an `--api-server-count` sweep at that shape), and the same for vLLM-Ascend 0.9.1 on a 910B host; with the two
  H100 runs as they are, such a figure would also have to say why they differ (TP8's per-step broadcast to eight
  workers, or the benchmark client).

### MLPerf Inference v4.1 and v5.1 (held out)

Twenty llama2-70b-99 results from MLPerf Inference's closed division, two sources (one per round), were added
as held-out points by a rule fixed before predicting (in each source's entry): every Offline, Server and
Interactive result the accelerator's maker (AMD, NVIDIA) submitted on an available single-node system of a
catalog accelerator in its standard configuration (MaxQ, CTS and Triton variants out; of AMD's two standard
MI325X systems in v5.1, each scenario from the first-listed that has it). v4.1 gives 8 MI300X, 1 MI300X,
8 H100 and 8 H200 (Offline, Server); v5.1 gives 8 MI300X, 8 MI325X, 8 B200 and a 4-GPU GB200 tray (Offline,
Server, Interactive). Each point is the run's completed output tokens/s for the whole system
(mlperf_log_summary.txt), predicted as the submission's instances (TP1 per GPU, TP2 pairs on H100) times their
count, each request the run's mean: output length the run's tokens/s over samples/s (272-302 tokens).
Precision, KV-cache dtype, batch limit, graph mode and KV memory fraction are each submission's own settings
(NVIDIA's configs, AMD's harness files). Server and Interactive are the highest load whose predicted TPOT and
TTFT stay within MLPerf's bounds (200 ms and 2 s; 40 ms and 0.45 s, read from each log); MLPerf bounds the
99th percentile and the model gives means, so these err fast. The MI325X chip file was added for them (CDNA 3
as the MI300X; 256 GiB from ROCm's GPU table, 6.0 TB/s secondary, compute derived from 304 CUs at the MI300X's
clock). They were predicted before any model change and kept as they came out: they took the medians from
16.4% to 21.6% in-sample and from 17.1% to 21.8% out of sample, and the within-30% counts from 71 and 70 of
101 to 81 and 80 of 121. No catalog figure comes from MLPerf, so out of sample equals in-sample here. H100
and H200 land within 12% (Offline -2.0% and -5.5%, Server +11.5% and +1.2%); MI300X -22% to -38%, MI325X -45%
to -57%, B200 and GB200 -28% to -36% at high load and -79% to -81% Interactive: 10 of 20 within 30% (all 8 of
v4.1's, 2 of v5.1's 12). The Blackwell weight-size sweep (above) then took the two Interactive points to -25%
and -18% (12 of 20 within 30%); with the later MI300X FP8 tables 16 of 20 were within 30%, and holding each
FLOP-bound benchmark's largest-M efficiency above it (above) brought two more Blackwell points in (18 of 20).

- **The mean prompt length is assumed (300 tokens), and it matters.** Neither MLPerf's reference docs nor the
  submissions state the OpenOrca subset's mean prompt length (prompts are under 1,024 tokens; the reference
  run's mean output is 294.45 tokens). 300 was chosen before predicting. Prefill is a large share of these
  runs (a 300-token prompt costs about what its 300 decode tokens do once compute-bound), so at 150 tokens the
  20 points' median |error| would be 18% (13 within 30%), at 600 tokens 53% (1 within 30%). No single length
  brings all chips in: at 150 tokens H100 and H200 go 28-50% too fast while the AMD and Blackwell points range
  from +1% to -59%. The figure needed first is the subset's mean tokenized prompt length (tok_input_length in
  open_orca_gpt4_tokenized_llama.sampled_24576.pkl).
- **MI300X and MI325X: per-channel FP8 GEMMs, now measured at 70B's shapes.** As first predicted, the cdna3
  FP8 tables were hipBLASLt's on 405B's TP8 shapes at M 1-32 and AITER's block-scaled kernel on DeepSeek's
  shapes, so at MI300X's 1,181 sequences per GPU (v5.1 Offline) the FP8 FFN ran at the block-scaled kernel's
  21% of peak and the AMD points landed at -22% to -57%. AITER PR #1092 tuned its rowwise FP8 GEMM
  (per-token activation and per-channel weight scales, the format of Llama's FP8 checkpoints) on MI300X for
  Llama 70B and 405B at TP1 to TP8 and published each tuned shape's kernel time at M 1-16,384 (288 shapes
  and M; the 240 whose roofline time exceeds the per-call floor form the table, the rest are floor-bound). A
  GEMM now takes the tables of its weights' format where the tables state one (`weight` in kernels.toml:
  `fp8` for the rowwise and hipBLASLt tables, `fp8_block` for the block-scaled one; tables of other
  architectures state none and are unchanged). At M 1,024 the rowwise kernel reaches 32% of FP8 peak in the
  median shape (38% at 70B's gate_up), 39% from M 8,192. v4.1's MI300X points land at +1% to +17%, v5.1's
  Offline and Server at -10% and -3%, MI325X at -18% to -25%. The MI325X has the MI300X's compute (304 CUs,
  2,615 TFLOPS dense FP8) and 13% more bandwidth, so at these compute-bound loads the model puts it within 4%
  of MI300X where AMD's v5.1 results have it 24% ahead (Offline 34,520 against 27,804 tokens/s); an FP8 GEMM
  time measured on an MI325X (whose 1,000 W board may hold higher clocks under load than the MI300X's 750 W)
  is what these points need, and none was found. v5.1 Interactive differs by harness more than by chip:
  MI300X's run (max_num_seqs 600, no chunked prefill) makes 1,105 tokens/s per GPU where MI325X's (3,840,
  chunked prefill) makes 2,301; the model, which has no term for those settings, gives 1,496 and 1,808 (+35%
  and -21%).
- **Blackwell FP4 (B200, GB200): -26% to -31% Offline, -23% and -30% Server, -15% and -23% Interactive (were
  -79% and -81% Interactive as first predicted).**
  The Interactive load the model allowed within a 40 ms TPOT was 57 sequences per B200, whose FFN took 25.6 ms
  where all of 70B's FP4 weights stream in about 4.4 ms: the small-shape CUTLASS rows read as streaming rates.
  With the weight-size sweep above, a B200 holds 224 sequences at 40 ms (FFN 16.1 ms, now bound by the
  FLOP-bound rows' 17% of peak at M below 512) and the prefills that interrupt them. Offline and Server are
  compute-bound (1,596 sequences per B200): the FFN runs at 32.5% of the FP4 peak and each cohort's prefill
  (all its prompts in one forward, M over 400,000) at 37%, where it ran at 30% and 34% before each FLOP-bound
  benchmark's largest-M efficiency was held above it (above); the missing figure is the large-shape FP4 GEMM at
  M 200-2,000 described above. The 4.8 ms of eager launches per step (use_graphs False in NVIDIA's configs) is a
  small part: with graphs the B200 Offline point moved from -36.4% to -36.0% when it was measured.
- **Server.** On H100, B200 and GB200 the 200 ms TPOT bound does not bind in the model (memory sets the load;
  on H200 it binds at 740 of 760 sequences), so Server comes out as Offline, where the runs reach 88-98% of
  their Offline rate (H100 Server +12% against Offline -2%): a Poisson stream's p99 tail, which the model's
  means do not see. On MI300X and MI325X the bound binds at about 600 sequences per GPU (v5.1 Server: MI300X
  -3%, MI325X -25%; v4.1's MI300X Server +12% on 8 GPUs, +17% on one).
- Not entered: llama3.1-405b (B200 Offline runs TP2 x PP2, and the planner has no pipeline parallelism; its
  dataset's mean prompt length is not published either), llama3.1-8b (CNN/DailyMail, mean prompt length not
  published), mixtral-8x7b (no preset), and the 8-node GB200/GB300 NVL72 results (not single-node).
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
