"""Step-time model of a deployment: a model on N chips with a parallel strategy, costed op group by op group
as roofline time (FLOPs at peak x efficiency, bytes at bandwidth x efficiency) plus communication.

Strategies (per-chip batch `batch`; per attention chip under AFD):
  tp   tensor parallel over all chips: heads, FFN widths and experts split; two all-reduces per layer.
  ep   data-parallel attention on every chip, experts spread over all chips (EP = chips), dense layers
       replicated; all-to-all dispatch (8-bit) and combine (16-bit) per MoE layer, overlapped with compute
       by two micro-batches when `overlap`.
  afd  attention-FFN disaggregation: A attention chips (data-parallel attention, KV cache, LM head) and F FFN
       chips (experts over F, dense FFN tensor-parallel over F); activations cross the network each layer
       (8-bit out, 16-bit back); micro-batches pipeline attention, network and FFN, so a layer costs its
       slowest stage.
Measured mechanisms (spec/catalog/kernels.toml, cost/kernel_model.py), where the chip's architecture has a
benchmark: matmuls run at the roofline efficiency a GEMM benchmark measured at their M (grouped GEMMs for the
routed experts; experts split tensor-parallel at a measured fused-MoE layer's efficiency), or, where a
weight-size sweep was measured, each dense call streams at the rate swept for its size and computes at the
FLOP-bound rows' efficiency at its M; attention runs at its kernel's measured fraction of peak and bandwidth,
decode expert dispatch and combine take the low-latency kernels' measured time, and each collective pays its link
class's small-message latency; a step the engine does not capture in a graph (`graphs=False`) pays a launch per op
call. Where a kernel benchmark measured an architecture's per-call floor, each matmul call (`gemm_call_floor`) and
each small kernel (`small_kernel_floor`) takes at least that long, and where a profile measured an engine's host
dispatch per op on an architecture, a step takes at least that dispatch (`host_dispatch_wait`); an AFD decode step
waits on average for its slowest rank where that jitter was measured (`afd_straggler_wait`). Without a benchmark
the scalar defaults of efficiency.toml apply. Attention projections may keep a wider format than the experts
(Precision.attention_weight).
A deployment that does not fit in memory is reported infeasible with the numbers, never estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

from modelchip.cost import afd_schedule, attention_layers, streaming
from modelchip.cost import collectives as measured_comm
from modelchip.cost import kernel_model as km
from modelchip.cost.conventions import Precision
from modelchip.cost.efficiency import Efficiency, defaults
from modelchip.cost.model_cost import ModelCost
from modelchip.errors import ModelchipError
from modelchip.spec import dtypes
from modelchip.spec.chips import Chip, System

STRATEGIES = ("tp", "ep", "afd")
# how the ranks of a modelchip runtime layout hold attention (Deployment.attention)
RUNTIME_ATTENTION = {"ep": ("replicated", "data-parallel"), "afd": ("tensor-parallel",)}
MOE_BALANCE = ("eplb", "static", "ideal")
ACT_BYTES = 2.0  # activations and combine traffic in BF16
# Memory-bound kernels between the matmuls, counted as a fused production engine runs them (TensorRT-LLM,
# SGLang and vLLM fuse the residual add into RMSNorm and SiLU into the multiply): per layer two add+RMSNorm
# kernels, each reading the residual and the sublayer output and writing the new residual and the normalised
# input (4 hidden-sized tensors); SiLU-and-mul reads gate and up and writes their product (3 FFN-wide
# tensors per active FFN width); per sampled token the logits are written once in float32 and read twice by
# sampling (max/softmax, then the draw).
NORM_PASSES = 8
ACT_FN_PASSES = 3
LOGIT_PASSES = 3
LOGIT_BYTES = 4.0
# an MTP module's calls beside its transformer block and the LM head it shares: RMSNorm of the token's embedding
# and of the previous hidden state, and the projection of their concatenation (DeepSeek-V3 technical report,
# arXiv 2412.19437, section 2.2)
MTP_MODULE_OPS = 3


# the fields a step's batch-independent terms (_Shape) do not read: copies by Deployment.but that change only
# these share those terms
_PER_BATCH = frozenset({"batch", "microbatches"})


@dataclass(frozen=True)
class Deployment:
    chip: Chip
    chips: int
    strategy: str
    batch: float  # sequences per chip; a fraction spreads one sequence over chips (1/8: one sequence on TP8)
    context: int
    phase: str = "decode"
    prompt_len: int = 0
    # prefill: leading tokens of each prompt whose KV a prefix cache already holds (vLLM's automatic prefix
    # caching, SGLang's radix cache, DeepSeek's on-disk KV cache); they are read by attention, not computed
    cached_prefix: int = 0
    attn_chips: int = 0
    ffn_chips: int = 0
    precision: Precision = field(default_factory=Precision)
    mtp: int = 0
    mtp_acceptance: float = 0.0
    redundant_experts: int = 0  # extra expert replicas for load balance (DeepSeek: 32 on 256)
    overlap: bool = False
    microbatches: int = 3
    system: System | None = None
    efficiency: Efficiency = field(default_factory=defaults)
    # the engine replays each step as one captured graph (CUDA graphs, ACL graphs); without one, every kernel
    # of the step pays the chip's catalog launch cost
    graphs: bool = True
    # fixed host costs a calibration measures (0 for the catalog's chips, which have none measured)
    overhead_per_op_s: float = 0.0
    overhead_per_seq_s: float = 0.0  # per sequence per attention call
    overhead_per_step_s: float = 0.0  # host work of a step: batch metadata, sampling, bookkeeping
    overhead_per_seq_step_s: float = 0.0  # the same, per sequence in the batch
    overhead_per_expert_s: float = 0.0  # host cost per routed expert a MoE layer runs (a per-expert loop)
    # (bytes streamed since a small op last ran, its extra seconds): ops run cold behind a layer's weights
    overhead_cold_op: tuple[tuple[float, float], ...] = ()
    # source ids whose measured figures are left out (leave-one-source-out validation)
    exclude: frozenset = frozenset()
    # expert placement: "eplb" (rebalanced, with any redundant replicas), "static" (no rebalancing) or "ideal"
    # (perfectly even routing, as published profiles simulate); the busiest rank's measured excess applies
    moe_balance: str = "eplb"
    # mean / max tokens per data-parallel attention rank (1: even); serving sets the measured figure
    attention_balance: float = 1.0
    # the serving engine, where its memory policy is catalogued (tensorrt-llm: the KV cache gets a fraction of
    # the memory the weights leave); otherwise the device keeps efficiency.memory_reserved back
    engine: str = ""
    kv_free_fraction: float = 0.0  # the run's own setting of that fraction, where published (0: the default)
    # weights that do not fit stay in host memory and stream over the chip's host link every forward, prefetched
    # a layer ahead (vLLM's --cpu-offload-gb, SGLang's weight offload on Grace): only the part of the stream the
    # step's own work does not cover adds time
    weight_offload: bool = False
    # collectives a calibration measured on this machine's process group (cost/collectives.py): a tp step's
    # communication is costed with their alpha-beta fits, and ranks sharing one device compute at their share
    collectives: measured_comm.MeasuredCollectives | None = None
    # a calibrated backend's measured streaming per packed weight format (cost/streaming.py): a matmul over
    # weights in one of these formats reads them at its measured rate; `notes` says where a profile fell short
    weight_streaming: tuple = ()
    notes: tuple = ()
    # attention as one of modelchip's own runtime layouts holds it (calibrate/loop.py predicts this machine's
    # parallel runs with it; "" is the strategy's own, as the catalog deployments run): "replicated" (ep: every
    # rank attends every token and dispatches its 1/M chunk of them to the experts), "data-parallel" (ep: each
    # rank its own sequences; rank 0 computes every row's logits), "tensor-parallel" (afd: the attention ranks
    # are one tensor-parallel group holding every sequence)
    attention: str = ""

    def check(self, cost: ModelCost) -> None:
        if self.strategy not in STRATEGIES:
            raise ModelchipError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.chips < 1 or not self.batch > 0 or self.context < 1:
            raise ModelchipError("chips, batch and context must be positive")
        if self.strategy == "afd":
            if self.attn_chips < 1 or self.ffn_chips < 1:
                raise ModelchipError("afd needs --attn-chips and --ffn-chips, both positive")
            if self.attn_chips + self.ffn_chips != self.chips:
                raise ModelchipError(f"attention chips ({self.attn_chips}) + FFN chips ({self.ffn_chips}) must "
                                     f"equal --num-chips ({self.chips})")
        ep = self.expert_parallel
        slots = cost.moe.experts + self.redundant_experts if cost.moe else 0
        if cost.moe and ep > 1 and slots % ep:
            extra = f" + {self.redundant_experts} redundant" if self.redundant_experts else ""
            raise ModelchipError(f"expert-parallel degree {ep} does not divide the {cost.moe.experts}{extra} "
                                 "experts (add --redundant-experts to place replicas)")
        if self.strategy == "tp" and cost.kv_heads > 1 and self.chips > cost.kv_heads and self.chips % cost.kv_heads:
            raise ModelchipError(f"TP degree {self.chips} does not divide or fit the {cost.kv_heads} K/V heads")
        if self.moe_balance not in MOE_BALANCE:
            raise ModelchipError(f"unknown MoE balance {self.moe_balance!r}; choose from {', '.join(MOE_BALANCE)}")
        if not 0 < self.attention_balance <= 1:
            raise ModelchipError(f"attention balance must be in (0, 1], got {self.attention_balance}")
        if self.mtp < 0 or not 0 <= self.mtp_acceptance <= 1:
            raise ModelchipError("--mtp must be >= 0 and --mtp-acceptance in [0, 1]")
        if self.attention and self.attention not in RUNTIME_ATTENTION.get(self.strategy, ()):
            raise ModelchipError(f"attention {self.attention!r} is not a runtime layout of strategy {self.strategy!r}")
        if self.collectives is not None and self.chips != self.collectives.world_size:
            raise ModelchipError(f"the measured collectives are for {self.collectives.world_size} ranks, the "
                                 f"deployment has {self.chips}")
        if self.phase == "prefill" and self.prompt_len < 1:
            raise ModelchipError("prefill needs a positive --prompt-len")
        if self.cached_prefix and self.phase != "prefill":
            raise ModelchipError("--cached-prefix applies to prefill (--phase prefill)")
        if not 0 <= self.cached_prefix < max(self.prompt_len, 1):
            raise ModelchipError(f"--cached-prefix must be in [0, --prompt-len) = [0, {self.prompt_len}): at least "
                                 f"one prompt token is computed; got {self.cached_prefix}")

    def but(self, **changes) -> Deployment:
        """This deployment with `changes` to its fields: dataclasses.replace without re-running the frozen
        __init__'s 35 guarded setattrs (a plan makes ~28,000 of these; replace cost 15% of it). Unknown field
        names are refused, as replace refuses them."""
        if not changes.keys() <= self.__dataclass_fields__.keys():
            unknown = changes.keys() - self.__dataclass_fields__.keys()
            raise TypeError(f"Deployment has no field(s) {', '.join(sorted(unknown))}")
        new = object.__new__(Deployment)
        new.__dict__.update(self.__dict__)
        if changes.keys() <= _PER_BATCH:  # copies of one configuration share one memo of its batch-independent
            new.__dict__["_shared"] = self.__dict__.setdefault("_shared", {})  # terms (_shape)
        else:
            new.__dict__.pop("_shared", None)
        new.__dict__.update(changes)
        return new

    @property
    def expert_parallel(self) -> int:
        return {"tp": 1, "ep": self.chips, "afd": self.ffn_chips}[self.strategy]

    @property
    def tokens_per_step(self) -> float:
        """Tokens a sequence gains per decode step: 1, plus accepted drafts with MTP (r + r^2 + ...)."""
        return 1.0 + sum([self.mtp_acceptance ** i for i in range(1, self.mtp + 1)])


@dataclass
class Prediction:
    feasible: bool
    reason: str
    tpot_ms: float | None
    ttft_ms: float | None
    batch_per_chip: int
    tokens_per_s_per_chip: float | None
    memory_gb_per_chip: float
    memory_gb: dict
    breakdown_ms: dict
    usd_per_mtok: float | None
    bound: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _roofline(flops: float, nbytes: float, peak: float, bw: float, eff_c: float, eff_m: float) -> float:
    return max(flops / (peak * eff_c), nbytes / (bw * eff_m))


_GEMM_EFFICIENCIES = frozenset({"gemm", "memory", "memory_by_tokens"})  # set by hand, they replace the kernel tables


def _gemm(d: Deployment, flops: float, nbytes: float, m: float, peak: float, bw: float, dtype: str,
          grouped: bool = False, weight_dtype: str = "", moe_shard: float = 0.0,
          calls: tuple[float, ...] = ()) -> float:
    """A matmul of `m` rows at the efficiency its architecture's GEMM benchmark measured at that M; without
    one (or with a calibrated or user-set efficiency), at the scalar gemm and weight-streaming defaults. Weights
    in a packed format a calibration measured (`d.weight_streaming`) are read at that format's rate. Routed
    experts split tensor-parallel to `moe_shard` intermediate width per chip run as the engines' fused MoE
    kernel, at the efficiency a whole fused MoE layer was measured at on the architecture, where it was. Where the
    architecture has a weight-size sweep (kernel_model.gemm_split), a dense group's calls (`calls`: the weight
    elements of each call of one layer, which split the group's FLOPs and bytes) each take the longer of their
    FLOPs at the measured compute efficiency and their bytes at the rate swept for their size; so do routed
    experts where no grouped benchmark covers the architecture, each call the weights of every expert hit."""
    eff = d.efficiency
    packed = streaming.lookup(d.weight_streaming, weight_dtype) if weight_dtype and d.weight_streaming else None
    if packed is not None:
        return max(flops / (peak * eff.gemm), nbytes / packed.rate(m))
    explicit = not eff.explicit.isdisjoint(_GEMM_EFFICIENCIES)
    e = fused = None if explicit or not moe_shard else km.fused_moe_efficiency(d.chip, dtype, m, moe_shard,
                                                                                d.exclude, d.engine)
    if e is None and not explicit:
        curves = _per_config(d, ("gemm", dtype, grouped, weight_dtype),
                             lambda: km.gemm_curves(d.chip, dtype, grouped, d.exclude, weight_dtype, d.engine))
        e = curves.efficiency(m)  # km.gemm_efficiency
    if e is None:
        return _roofline(flops, nbytes, peak, bw, eff.gemm, eff.weight_memory(m))
    total = sum(calls)
    # a measured fused MoE layer is the whole kernel already; grouped experts without a grouped benchmark take
    # the sweep at the summed weights of their launch (kernel_model.gemm_split)
    split = curves.split_at(m) if total > 0 and fused is None else None  # km.gemm_split
    if split is None:
        return max(flops / peak, nbytes / bw) / e
    e_c, sweep = split
    return sum(max(flops * w / total / (peak * e_c), nbytes * w / total / (bw * km.stream_efficiency(sweep, w)))
               for w in calls)


def _per_call(weights: float, fractions: tuple[float, ...]) -> tuple[float, ...]:
    """The weight elements of each call of a matmul group of `weights` elements split by `fractions`."""
    return tuple([weights * f for f in fractions])  # a list, not a generator: ~100,000 of these a plan


def _attention_eff(d: Deployment, phase: str, cost: ModelCost) -> tuple[float, float]:
    """(compute, memory) efficiency of the attention core: a measured attention layer of this kind on this chip
    (decode), else the architecture's measured kernel, else the defaults."""
    eff = d.efficiency
    if eff.explicit & {"attention_compute", "attention_memory"}:
        found = None
    else:
        layer = attention_layers.layer_efficiency(d.chip.id, cost.attention_kind,
                                                  d.context, d.exclude) if phase == "decode" else None
        if layer:
            return layer, layer
        found = km.attention_efficiency(d.chip, phase, d.exclude)
    compute, memory = found or (None, None)
    return compute or eff.attention_compute, memory or (eff.attention_memory if phase == "decode" else eff.memory)


def _activated(experts: int, top_k: int, tokens: float) -> float:
    """Expected experts hit at least once when `tokens` tokens each pick top_k of `experts` (balanced)."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def _expert_slots(experts: int, d: Deployment) -> int:
    """Expert copies the expert-parallel group runs: the experts plus their redundant replicas. A replica takes
    a share of its expert's tokens (that is what it is placed for: DeepSeek's EPLB, SGLang's and TensorRT-LLM's
    redundant experts), so under balanced routing each token-expert pair lands on one of experts + replicas
    copies, and every copy a step's tokens reach streams its own weights. Without expert parallelism every
    chip holds every expert and replicas do not apply."""
    return experts + d.redundant_experts if d.expert_parallel > 1 else experts


def _prefill_core(cost: ModelCost, prompt: int, cached: int) -> tuple[float, float]:
    """(attention core FLOPs per computed token, cached-prefix KV bytes read per sequence) for a prefill of
    the last `prompt - cached` tokens of a `prompt`-token prompt. Token i attends over positions 1..i, so the
    computed tokens' FLOPs are the whole prompt's less the cached prefix's: P a(P) - c a(c), where a(n) is the
    per-token average of an n-token prefill; the prefix's cache is read once per layer, as by one decode query."""
    full, _ = cost.prefill_attention(prompt)
    if not cached:
        return full, 0.0
    return (prompt * full - cached * cost.prefill_attention(cached)[0]) / (prompt - cached), \
        cost.decode_attention(cached)[1]


def _scale_up_domain(d: Deployment) -> int:
    """Chips per scale-up domain: the system's, else an 8-GPU node's."""
    return d.system.scale_up_domain if d.system else 8


def _links(d: Deployment, group: int) -> tuple[float, float, int]:
    """(scale-up B/s, scale-out B/s, chips per scale-up domain) for a group of `group` chips."""
    up, out = _per_config(d, "links", lambda: _link_rates(d))
    return up, out, min(_scale_up_domain(d), group)


def _link_rates(d: Deployment) -> tuple[float, float]:
    """(scale-up B/s, scale-out B/s) of the deployment's chips."""
    systems = [d.system] if d.system else []
    up = _link_bandwidth([s.scale_up for s in systems] + [d.chip.scale_up], d.efficiency.scale_up, d.exclude)
    out = _link_bandwidth([s.scale_out for s in systems] + [d.chip.scale_out], d.efficiency.scale_out, d.exclude)
    return up, out


def _link_bandwidth(links: list, efficiency: float, exclude: frozenset) -> float:
    """The first measured usable bandwidth (system before chip) not from an excluded source, else the first
    spec bandwidth times the default link efficiency; 0 where the catalog has neither."""
    for link in links:
        fig = link.usable_bandwidth
        if fig and fig.source_id not in exclude:
            return fig.value
    spec = next((link.bandwidth.value for link in links if link.bandwidth), 0.0)
    return spec * efficiency


def _all_to_all(d: Deployment, group: int, bytes_out: float, spread: bool = False) -> float:
    """Seconds for each chip of `group` to send `bytes_out` spread evenly over the group.

    Within one scale-up domain the traffic rides the scale-up link. A group spanning domains sends
    everything over the scale-out NICs, as latency-oriented all-to-all kernels do (DeepEP's low-latency mode
    is pure RDMA), unless `spread`, where the share bound for peers in the same domain uses scale-up.
    """
    if group <= 1 or bytes_out <= 0:
        return 0.0
    up, out, domain = _links(d, group)
    if group <= domain:
        local, remote = bytes_out * (group - 1) / group, 0.0
    elif spread:
        local, remote = bytes_out * (domain - 1) / group, bytes_out * (group - domain) / group
    else:
        local, remote = 0.0, bytes_out
    if (local and not up) or (remote and not out):
        raise ModelchipError(f"{d.chip.id} has no {'scale-up' if local and not up else 'scale-out'} bandwidth "
                             "in the catalog; cannot cost its communication")
    return max(local / up if local else 0.0, remote / out if remote else 0.0)


def _throughput_all_to_all(d: Deployment, group: int, tokens: float, top_k: int, token_bytes: float) -> float:
    """Prefill-style dispatch/combine (DeepEP's normal kernels): a token crosses the network once per remote
    scale-up domain that holds one of its experts, then is forwarded over the scale-up link."""
    up, out, domain = _links(d, group)
    if group <= domain:
        return _all_to_all(d, group, tokens * top_k * token_bytes)
    domains = group / domain
    remote_domains = domains * (1 - (1 - 1 / domains) ** top_k) * (domains - 1) / domains
    remote = tokens * remote_domains * token_bytes
    local = tokens * top_k * token_bytes * (domain - 1) / domain
    if not out or not up:
        raise ModelchipError(f"{d.chip.id} lacks scale-up or scale-out bandwidth in the catalog")
    return max(remote / out, local / up)


def _collective_latency(d: Deployment, group: int) -> float:
    """Fixed seconds of one collective among `group` chips: inside a scale-up domain the system's measured
    small-message time, else its architecture's scale-up link class; across domains the scale-out link
    class's. Zero where nothing is measured."""
    if group <= 1:
        return 0.0
    if group <= _scale_up_domain(d):
        fig = d.system.scale_up_latency if d.system else d.chip.scale_up.collective_latency
        if fig and fig.source_id not in d.exclude:
            return fig.value
        return km.fixed("collective_latency", (f"{d.chip.arch}/scale-up",), d.exclude) or 0.0
    return km.fixed("collective_latency", (f"{d.chip.arch}/scale-out",), d.exclude) or 0.0


def _op_calls(cost: ModelCost, d: Deployment) -> float:
    """Op calls of a step: the model's, plus each MTP draft pass's at decode. A pass is one layer's calls (the
    layers' average), the embedding, final norm, LM head and sampling a step adds, and the module's own
    MTP_MODULE_OPS."""
    calls = cost.op_calls()
    if d.phase == "decode" and d.mtp:
        calls += d.mtp * (cost.layer_op_calls / cost.layers + cost.op_calls() - cost.layer_op_calls + MTP_MODULE_OPS)
    return calls


def _launch(cost: ModelCost, d: Deployment) -> float:
    """Seconds of kernel launches in a step not captured in a graph: one launch per op call of the model's op
    list, at the architecture's measured launch cost (none where nothing is measured)."""
    if d.graphs:
        return 0.0
    return (km.fixed("kernel_launch", (d.chip.arch,), d.exclude) or 0.0) * _op_calls(cost, d)


def _kernel_floor(cost: ModelCost, d: Deployment) -> float:
    """Seconds a graph-replayed step spends beyond its kernels' roofline time, per op call: launch inside the
    graph, ramp-up and tail of kernels too small to reach peak (measured for a whole batch-1 step, so it is
    what keeps small-batch decode above its weight-read time)."""
    if not d.graphs:
        return 0.0  # outside a graph the launch cost (_launch) is paid instead
    return (km.fixed("graph_kernel", (d.chip.arch,), d.exclude) or 0.0) * _op_calls(cost, d)


def _call_floor(d: Deployment, dtype: str) -> float:
    """Least seconds one GEMM call of `dtype` takes on the chip's architecture, where a kernel benchmark
    measured it (0 elsewhere: the NVIDIA GPUs' small-kernel time is in their graph_kernel figure)."""
    return _gemm_call_floor(d.chip.arch, dtype, d.exclude)


@cache  # three questions per costed step, the same few answers
def _gemm_call_floor(arch: str, dtype: str, exclude: frozenset) -> float:
    if not arch:
        return 0.0
    return km.fixed("gemm_call_floor", (f"{arch}/{dtypes.canonical(dtype)}",), exclude) or 0.0


def _below_floor(floor: float, total: float, layers: int, fractions: tuple[float, ...]) -> float:
    """Seconds a GEMM group's calls wait on the per-call floor: over `layers` layers taking `total` seconds,
    the call holding fraction f of a layer's weights runs max(floor, f x total / layers) (at one M a call's
    roofline time is proportional to its weights)."""
    if not floor or not layers:
        return 0.0
    per_layer = total / layers
    return layers * sum(max(0.0, floor - f * per_layer) for f in fractions)


def _small_kernel_floor(floors: tuple[float, float] | None, attention: float, work: float) -> float:
    """Seconds the step's non-matmul kernels (norms, rotary, KV writes, attention, activation) wait on their
    architecture's measured per-call floor beyond their own roofline time; 0 where none is measured. Charged
    on two groups whose calls grow alike: the attention calls (one a layer, `attention` seconds: they grow with
    batch x context) and the rest (`work` seconds: they grow with tokens alone). One group would let attention
    calls above the floor hide token-sized calls still below it (128 sequences at 1K context on TP8). `floors`:
    the two groups' floors (_small_kernel_floors)."""
    if floors is None:
        return 0.0
    return max(0.0, floors[0] - attention) + max(0.0, floors[1] - work)


def _small_kernel_floors(cost: ModelCost, d: Deployment) -> tuple[float, float] | None:
    """(attention calls', other small calls') seconds at the architecture's per-call floor (_small_kernel_floor);
    None where the chip has no architecture."""
    if not d.chip.arch:
        return None
    per_call = km.fixed("small_kernel_floor", (d.chip.arch,), d.exclude) or 0.0
    rest = max(cost.small_op_calls - cost.layers, 0)
    return per_call * cost.layers, per_call * rest


def _attention_peak(chip: Chip, prec: Precision, exclude: frozenset = frozenset()) -> float:
    """FLOP/s the attention core's efficiency is a fraction of. The core runs in the cache's format: 8-bit math
    only where the KV is 8-bit and the chip has it. The attention efficiencies are measured on BF16 kernels
    (fractions of the BF16 peak), and an FP8 attention kernel does not double its BF16 twin's speed (its softmax
    and the transposes around the 8-bit matmuls do not speed up): where the architecture has that ratio measured
    (`fp8_attention_speedup`), 8-bit attention runs at the BF16 peak times it rather than at the FP8 peak. Only the
    compute side of the core's roofline uses this peak: bandwidth-bound decode reads the 8-bit cache at full rate."""
    if not (prec.kv in ("fp8", "int8") and chip.peak("fp8")):
        return chip.peak("bf16")
    speedup = km.fixed("fp8_attention_speedup", (chip.arch,), exclude) if chip.arch else None
    return min(chip.peak("fp8"), chip.peak("bf16") * speedup) if speedup else chip.peak("fp8")


def _host_dispatch(cost: ModelCost, d: Deployment) -> float:
    """Seconds the host takes to issue a step's operators where the engine does not replay the step as one
    graph and the architecture/engine pair has a measured per-op dispatch time (0 elsewhere)."""
    if not (d.engine and d.chip.arch):
        return 0.0
    per_op = km.fixed("host_dispatch", (f"{d.chip.arch}/{d.engine}",), d.exclude) or 0.0
    return per_op * _op_calls(cost, d)


def _dense_weight_bytes(prec: Precision) -> float:
    """Bytes per dense-FFN weight element: gate and up (2/3 of the elements) in the weight format, down in its own
    where a quantizer left it wider (`ffn_down_weight`)."""
    wb = dtypes.nbytes(prec.weight)
    return (2 * wb + dtypes.nbytes(prec.ffn_down_weight or prec.weight)) / 3


def _cold_ops(cost: ModelCost, d: Deployment, tp: int, dense_tp: int, wb: float, awb: float, experts_hit: float,
              kv_shard: int) -> tuple[float, float]:
    """(attention side, FFN side) seconds the step's small ops and per-expert loops pay beyond their in-cache cost,
    where a calibration measured it (`overhead_cold_op`, calibrate's op_overhead_cold): between two calls of the
    same op the step streams one layer's weights and KV cache, and past the last-level cache that evicts the
    op's code and data. Per call, the measured extra at one layer's bytes (log-interpolated)."""
    if not d.overhead_cold_op:
        return 0.0, 0.0
    L, moe = cost.layers, cost.moe
    streamed = (cost.attn_params * awb / tp + cost.dense_params * _dense_weight_bytes(d.precision) / dense_tp
                + (cost.decode_attention(d.context)[1] * d.batch * tp / kv_shard if d.phase == "decode" else 0.0))
    if moe:
        streamed += moe.layers * (experts_hit * moe.expert_params + moe.shared_params) * wb / (
            tp if d.strategy == "tp" else 1)
    per_call = km.log_interp(list(d.overhead_cold_op), max(streamed / L, 1.0))
    # an activation or routing per layer, and each expert a backend loops over (where it measured that loop)
    ffn_calls = L + (moe.layers * experts_hit if moe and d.overhead_per_expert_s else 0.0)
    return per_call * max(cost.small_op_calls - L, 0), per_call * ffn_calls


def _micro_batch_count(d: Deployment, sequences: float) -> int:
    """Micro-batches an AFD step of `sequences` sequences is split into: a step of fewer sequences gets fewer."""
    return max(1, min(d.microbatches, round(sequences)))


def _step_gap(d: Deployment) -> float:
    """Seconds the device idles between two decode iterations while the engine schedules the next, where a
    profile of that engine on the architecture measured the gap (`step_gap`, keyed architecture/engine); 0
    elsewhere, and for a calibrated runtime, whose per-step host work is measured with it."""
    if not (d.engine and d.chip.arch) or d.collectives is not None:
        return 0.0
    return km.fixed("step_gap", (f"{d.chip.arch}/{d.engine}",), d.exclude) or 0.0


def _afd_straggler(d: Deployment) -> float:
    """Seconds a catalog AFD decode step waits, on average, for the slowest rank of its synchronous attention-FFN
    exchange (jitter of polling, event and launch calls on any node delays every rank), where a deployment of
    that architecture measured it; 0 elsewhere. A calibrated AFD runtime has its own measured sync wait."""
    if d.strategy != "afd" or d.collectives is not None or not d.chip.arch:
        return 0.0
    return km.fixed("afd_straggler_wait", (f"{d.chip.arch}/afd",), d.exclude) or 0.0


def _timed_all_reduce(d: Deployment, group: int, nbytes: float) -> float | None:
    """Seconds of one all-reduce of `nbytes` per chip inside a scale-up domain, where the architecture's
    all-reduce kernel was timed at that message size (kernels.toml [[collective]]); None elsewhere (across
    domains, beyond the measured sizes, or nothing measured), where bytes over the link are charged."""
    if group <= 1 or group > _scale_up_domain(d) or not d.chip.arch:
        return None
    return km.all_reduce_time((f"{d.chip.arch}/scale-up",), group, nbytes, d.exclude, d.graphs)


def _all_reduce(d: Deployment, group: int, nbytes: float) -> float:
    if group <= 1:
        return 0.0
    return _all_to_all(d, group, 2 * nbytes, spread=True)  # ring: 2 (n-1)/n of the data leaves each chip


def evaluate(cost: ModelCost, d: Deployment) -> Prediction:
    """Time one step of the deployment, check memory, and derive throughput and price."""
    d.check(cost)
    return _evaluate(cost, d)


def _sides(cost: ModelCost, d: Deployment) -> tuple[float, float, float]:
    """(attention side, FFN side, LM head and sampling) seconds of a step of `d` (already checked)."""
    return _evaluate(cost, d, stop="sides")


def _ep_barrier_balance(d: Deployment) -> float:
    """A rank's own compute over compute plus its wait at the expert-parallel barriers (dispatch and combine) for
    the slowest rank, mean over the ranks, where the architecture has it measured at this many ranks
    (`ep_barrier_balance`); 0 elsewhere. Expert-parallel decode with data-parallel attention and no measured
    collectives profile only."""
    if (d.strategy != "ep" or d.collectives is not None or d.attention == "replicated" or d.expert_parallel <= 1
            or not d.chip.arch):
        return 0.0
    return km.fixed("ep_barrier_balance", (d.chip.arch,), d.exclude, ranks=d.expert_parallel * d.chip.devices) or 0.0


def _ep_barrier_wait(ratio: float, compute: float, charged: float) -> float:
    """Seconds a decode step's ranks wait at the expert-parallel barriers for the slowest rank, at the measured
    balance `ratio` (_ep_barrier_balance; 0: nothing measured, no wait). `compute` is the step's compute on the
    costed rank, `charged` the part of it that is already a wait for the slowest rank (the busiest expert rank's
    extra routed work, data-parallel attention waiting): the measured wait covers those, so only its excess is
    added."""
    if not ratio:
        return 0.0
    return max(0.0, (compute - charged) * (1 / ratio - 1) - charged)


def _layers_step(cost: ModelCost, d: Deployment) -> float:
    """Seconds of a step's layers, LM head, sampling and communication, before draft passes and fixed costs."""
    return _evaluate(cost, d, stop="step")


def _draft_passes(cost: ModelCost, d: Deployment, step: float) -> float:
    """Seconds of a decode step's MTP draft passes, `step` being its layers' time at 1 + mtp tokens per sequence.
    DeepSeek ships one MTP module, and the engines chain it (TensorRT-LLM's MTP Eagle, its default for DeepSeek,
    tech blog 2; SGLang's and vLLM's drafters alike): the first pass runs over every token the step verified, the
    other mtp - 1 on the last draft token alone, one per sequence. Each pass is one layer-sized module."""
    single = _layers_step(cost, d.but(mtp=0, mtp_acceptance=0.0)) if d.mtp > 1 else 0.0
    return (step + (d.mtp - 1) * single) / cost.layers


class _Shape:
    """The terms of a step of `d` that do not depend on its batch or micro-batch count (_PER_BATCH): formats,
    peaks, kernel efficiencies, parallel degrees, per-call weight splits, per-call floors, fixed per-step costs
    and the weights per chip. A plan costs each configuration at up to ~30 batch sizes and AFD micro-batches, so
    they are worked out once per configuration (`_shape`) rather than once per costed step."""

    def __init__(self, cost: ModelCost, d: Deployment):
        self.cost = cost
        chip, eff, prec = d.chip, d.efficiency, d.precision
        L, moe = cost.layers, cost.moe
        self.cdt = cdt = prec.compute_dtype(chip)
        self.peak = peak = chip.peak(cdt)
        self.attn_peak = _attention_peak(chip, prec, d.exclude)
        if not peak or not chip.bandwidth or not chip.memory_capacity:
            raise ModelchipError(f"{chip.id} lacks a peak, bandwidth or capacity figure for "
                                 f"{cdt}; pick another chip or add the figure to its catalog file")
        self.bw = bw = chip.bandwidth
        self.wb = wb = dtypes.nbytes(prec.weight)
        decode = d.phase == "decode"
        self.tp = tp = d.chips if d.strategy == "tp" else (d.attn_chips if d.attention == "tensor-parallel" else 1)
        self.attn_chips = d.attn_chips if d.strategy == "afd" else d.chips
        self.ffn_group = ffn_group = d.ffn_chips if d.strategy == "afd" else d.chips
        self.ep = ep = d.expert_parallel
        self.kv_shard = min(tp, cost.kv_heads)
        self.attn_c, self.attn_m = _attention_eff(d, d.phase, cost)
        # decode: (core FLOPs per token, cache bytes per sequence); prefill: (FLOPs per computed token, cached
        # prefix bytes per sequence)
        self.core = cost.decode_attention(d.context) if decode else _prefill_core(cost, d.prompt_len, d.cached_prefix)
        # attention projections and LM head may be kept in a wider format than the experts (BF16 or FP8
        # attention beside FP4 experts)
        self.attn_dtype = attn_dtype = prec.attention_weight or prec.weight
        self.awb = dtypes.nbytes(attn_dtype)
        # a tied LM head multiplies by the embedding table itself, so it streams that table's format
        self.head_dtype = head_dtype = (prec.head_dtype() if (cost.lm_head_params or prec.lm_head_weight)
                                        else prec.embedding_dtype())
        self.attn_cdt = attn_cdt = prec.compute_dtype(chip, attn_dtype)
        self.attn_peak_w = chip.peak(attn_cdt) or peak
        self.head_cdt = head_cdt = prec.compute_dtype(chip, head_dtype)
        self.head_peak = chip.peak(head_cdt) or peak
        # weight elements of each matmul call of one layer (a per-size streaming lookup, _gemm)
        self.proj_calls = _per_call(cost.attn_params / L / tp, cost.attn_call_fractions)
        self.dense_tp = dense_tp = tp if d.strategy == "tp" else (ffn_group if d.strategy == "afd" else 1)
        self.dense_calls = _per_call(cost.dense_params / dense_tp / max(cost.dense_layers, 1), _FFN_SPLIT)
        if prec.ffn_down_weight:
            self.down_cdt = down_cdt = prec.compute_dtype(chip, prec.ffn_down_weight)
            self.down_peak = chip.peak(down_cdt) or peak
        self.shard = shard = tp if d.strategy == "tp" else 1
        self.imbalance_ratio = None
        if moe:
            self.slots = _expert_slots(moe.experts, d)
            # split tensor-parallel, each expert is 1/tp of its intermediate width wide (Qwen3-235B at TP8: 192)
            self.width = moe.expert_params / (3 * cost.hidden) / shard if d.strategy == "tp" else 0.0
            self.shared_calls = _per_call(moe.shared_params / shard, _FFN_SPLIT)
            if ep > 1 and d.moe_balance != "ideal":
                self.imbalance_ratio = km.fixed("moe_imbalance", (d.moe_balance,), d.exclude, ranks=ep * chip.devices)
        self.attn_call_floor = _call_floor(d, attn_cdt)
        self.head_call_floor = _call_floor(d, head_cdt)
        self.call_floor = _call_floor(d, cdt)
        self.mem_bw = bw * eff.memory
        self.small_floor = _small_kernel_floors(cost, d)
        self.launch = _launch(cost, d)
        self.kernel_floor = _kernel_floor(cost, d)
        self.host_dispatch = _host_dispatch(cost, d)
        self.straggler = _afd_straggler(d) if decode else 0.0
        self.gap = _step_gap(d) if decode else 0.0
        self.barrier_balance = _ep_barrier_balance(d) if decode else 0.0
        self.tokens_per_step = d.tokens_per_step
        # weights per chip; the embedding table is stored in its own format (BF16 beside quantized layers); a tied
        # LM head reads that same table (lm_head_params is 0 then)
        self.attn_w = ((cost.attn_params + cost.attn_norm_params) * self.awb
                       + cost.embed_params * dtypes.nbytes(prec.embedding_dtype())
                       + cost.lm_head_params * dtypes.nbytes(head_dtype)) / tp
        self.expert_w = 0.0
        if moe:
            per_chip_experts = (moe.experts + d.redundant_experts) / max(ep, 1)
            self.expert_w = moe.layers * (per_chip_experts * moe.expert_params + moe.shared_params
                                          + moe.router_params) * wb / (tp if d.strategy == "tp" else 1)
        self.dense_w = cost.dense_params * _dense_weight_bytes(prec) / dense_tp
        self.cap = chip.memory_capacity.value * (1 - eff.memory_reserved)
        self.kv_fraction = d.kv_free_fraction or (km.fixed("kv_free_memory_fraction", (d.engine,), d.exclude)
                                                  if d.engine else None)


def _per_config(d: Deployment, key, make):
    """`make()`, a term that does not depend on `d`'s batch (or micro-batch count), kept in the memo its
    configuration's Deployment.but copies share; computed afresh for a deployment without one."""
    shared = d.__dict__.get("_shared")
    if shared is None:
        return make()
    if key not in shared:
        shared[key] = make()
    return shared[key]


def _shape(cost: ModelCost, d: Deployment) -> _Shape:
    """`d`'s batch-independent terms, from the memo its configuration's Deployment.but copies share."""
    shared = d.__dict__.get("_shared")
    found = shared.get("shape") if shared is not None else None
    if found is None or found.cost is not cost:
        found = _Shape(cost, d)
        if shared is not None:
            shared["shape"] = found
    return found


_FFN_SPLIT = (2 / 3, 1 / 3)  # weight elements of an FFN's gate_up and down calls


def _evaluate(cost: ModelCost, d: Deployment, stop: str = "") -> Prediction | tuple[float, float, float] | float:
    """evaluate's work; `stop` ends it early for the costing of a variant of `d`: "sides" at the step's
    (attention side, FFN side, LM head and sampling) seconds, "step" at the step before draft passes."""
    chip, eff, prec = d.chip, d.efficiency, d.precision
    sh = _shape(cost, d)
    cdt, peak, attn_peak, bw, wb = sh.cdt, sh.peak, sh.attn_peak, sh.bw, sh.wb
    H, L, moe = cost.hidden, cost.layers, cost.moe
    decode = d.phase == "decode"
    q = 1 + d.mtp if decode else d.prompt_len - d.cached_prefix  # tokens per sequence computed in this step
    b = d.batch
    tp, attn_chips, ffn_group, ep, kv_shard = sh.tp, sh.attn_chips, sh.ffn_group, sh.ep, sh.kv_shard
    tokens = b * q  # per attention chip (under tp: this chip's share of the instance's batch)

    # attention side, per chip. Under tp the instance runs b * tp sequences and each chip holds 1/tp of the
    # heads, so it does 1/tp of the instance's core FLOPs and reads 1/kv_shard of its cache (an MLA latent
    # cannot be split by heads, so every chip reads all of it)
    inst_tokens = tokens * tp
    # decode: KV read per sequence; prefill: the cached prefix's KV read per sequence
    core_flops, kv_bytes = sh.core
    core = _roofline(core_flops * tokens, kv_bytes * b * tp / kv_shard, attn_peak, bw, sh.attn_c, sh.attn_m)
    attn_dtype, awb, head_dtype, attn_cdt, head_cdt = sh.attn_dtype, sh.awb, sh.head_dtype, sh.attn_cdt, sh.head_cdt
    ffn_split = _FFN_SPLIT  # gate_up and down
    proj = _gemm(d, 2 * inst_tokens * cost.attn_params / tp, cost.attn_params * awb / tp, inst_tokens, sh.attn_peak_w,
                 bw, attn_cdt, weight_dtype=attn_dtype, calls=sh.proj_calls)
    head_params = cost.lm_head_params or cost.embed_params
    out_tokens = b * tp * (q if decode else 1)  # prefill needs logits of the last token only
    if d.attention == "data-parallel":  # the runtime gathers every rank's rows needing logits to rank 0
        out_tokens *= d.chips
    lm_head = _gemm(d, 2 * out_tokens * head_params / tp, head_params * dtypes.nbytes(head_dtype) / tp, out_tokens,
                    sh.head_peak, bw, head_cdt,
                    weight_dtype=head_dtype, calls=(head_params / tp,))

    # FFN side, per FFN chip; under afd an FFN chip serves every attention chip's tokens
    # (tensor-parallel attention ranks hold the same tokens, so an FFN chip serves 1/F of one rank's)
    served = inst_tokens * (1 if d.attention == "tensor-parallel" else attn_chips)
    ffn_tokens = served / ffn_group if d.strategy == "afd" else inst_tokens
    dense_tp = sh.dense_tp
    dense_tokens = ffn_tokens * (ffn_group if d.strategy == "afd" else 1)
    dense_calls = sh.dense_calls
    if prec.ffn_down_weight:  # down_proj kept wider: its own bytes, format and compute units (a second group)
        up, down = (cost.dense_params * f / dense_tp for f in ffn_split)
        down_cdt = sh.down_cdt
        dense = (_gemm(d, 2 * dense_tokens * up, up * wb, dense_tokens, peak, bw, cdt, weight_dtype=prec.weight,
                       calls=dense_calls[:1])
                 + _gemm(d, 2 * dense_tokens * down, down * dtypes.nbytes(prec.ffn_down_weight), dense_tokens,
                         sh.down_peak, bw, down_cdt, weight_dtype=prec.ffn_down_weight,
                         calls=dense_calls[1:]))
    else:
        dense = _gemm(d, 2 * dense_tokens * cost.dense_params / dense_tp, cost.dense_params * wb / dense_tp,
                      dense_tokens, peak, bw, cdt, weight_dtype=prec.weight, calls=dense_calls)
    moe_t = router = imbalance = 0.0
    if moe:
        # tokens the expert-parallel group routes: every chip's own, or (attention replicated) one set for all
        group_tokens = ffn_tokens * ep if d.strategy != "tp" and d.attention != "replicated" else ffn_tokens
        pairs = group_tokens * moe.top_k / max(ep, 1)  # token-expert pairs landing on this chip
        slots = sh.slots
        hit = _activated(slots, moe.top_k, group_tokens) / max(ep, 1)
        shard = sh.shard
        shared_tokens = ffn_tokens if d.strategy != "tp" else inst_tokens
        # routed experts as one grouped GEMM of pairs/hit rows per expert, the shared expert as a dense one;
        # split tensor-parallel, each expert is 1/tp of its intermediate width wide (Qwen3-235B at TP8: 192)
        width = sh.width
        # one grouped launch per projection runs every expert hit: its call streams all their weights
        routed = _gemm(d, 2 * pairs * moe.expert_params / shard, hit * moe.expert_params * wb / shard,
                       pairs / max(hit, 1e-9), peak, bw, cdt, grouped=True, weight_dtype=prec.weight,
                       moe_shard=width, calls=_per_call(hit * moe.expert_params / shard, ffn_split))
        shared = _gemm(d, 2 * shared_tokens * moe.shared_params / shard, moe.shared_params * wb / shard,
                       shared_tokens, peak, bw, cdt, weight_dtype=prec.weight,
                       calls=sh.shared_calls) if moe.shared_params else 0.0
        moe_t = moe.layers * (routed + shared)
        # the busiest expert-parallel rank sets the pace: routed work grows by its measured max/mean load
        if ep > 1 and d.moe_balance != "ideal":
            imbalance = moe.layers * routed * ((sh.imbalance_ratio or 1.0) - 1.0)
        router = moe.layers * _roofline(2 * shared_tokens * moe.router_params / shard, moe.router_params * wb / shard,
                                        peak, bw, eff.gemm, eff.memory)

    # a backend that loops over the experts a batch touches pays host work per expert run (calibrate's
    # moe_expert_overhead; 0 where nothing measured it: fused grouped kernels); AFD's micro-batches each run
    # the experts their own tokens touch
    expert_host = 0.0
    if moe and d.overhead_per_expert_s:
        m = _micro_batch_count(d, tp * b) if d.strategy == "afd" else 1
        expert_host = (d.overhead_per_expert_s * moe.layers * m
                       * _activated(slots, moe.top_k, group_tokens / m) / max(ep, 1))

    # a matmul call cannot run faster than its architecture's measured per-call floor: small weight shards (70B
    # at TP8) wait on it where their streaming time is shorter; FFN matmuls are gate_up (2/3) and down (1/3)
    floor_attn = (_below_floor(sh.attn_call_floor, proj, L, cost.attn_call_fractions)
                  + _below_floor(sh.head_call_floor, lm_head, 1, (1.0,)))
    call_floor = sh.call_floor
    floor_ffn = _below_floor(call_floor, dense, cost.dense_layers, ffn_split)
    if moe:
        floor_ffn += _below_floor(call_floor, moe.layers * routed, moe.layers, ffn_split)
        floor_ffn += _below_floor(call_floor, moe.layers * shared, moe.layers, ffn_split) if shared else 0.0

    # memory-bound kernels between the matmuls (see NORM_PASSES): norms and sampling beside attention,
    # SiLU-and-mul beside the FFN weights it follows
    mem_bw = sh.mem_bw
    norms = inst_tokens * L * NORM_PASSES * H * ACT_BYTES / mem_bw
    sampling = out_tokens * cost.vocab * LOGIT_PASSES * LOGIT_BYTES / tp / mem_bw
    widths = dense_tokens * cost.dense_params / (3 * H) / dense_tp
    if moe:
        widths += moe.layers * (pairs * moe.expert_params + shared_tokens * moe.shared_params) / (3 * H) / shard
    act_fn = widths * ACT_FN_PASSES * ACT_BYTES / mem_bw
    host_slowdown = 1.0
    if d.collectives is not None:
        # ranks sharing one device (a CPU's cores) each run at their share of the profiled rate, which depends on
        # the rows their matmuls run (measured: rank_compute), and their host threads share the cores too
        share, host_slowdown = d.collectives.compute_share, d.collectives.oversubscription()
        expert_rows = pairs / max(hit, 1e-9) if moe else 1.0
        proj, core, norms, act_fn = (v / share(inst_tokens) for v in (proj, core, norms, act_fn))
        lm_head, sampling = lm_head / share(out_tokens), sampling / share(out_tokens)
        dense, router = dense / share(dense_tokens), router / share(ffn_tokens)
        if moe:  # routed experts run their rows per expert, the shared expert every token
            moe_t = moe.layers * (routed / share(expert_rows) + shared / share(shared_tokens))
            imbalance /= share(expert_rows)

    floor_small = _small_kernel_floor(sh.small_floor, core, norms + sampling + act_fn)
    attn_cold, ffn_cold = _cold_ops(cost, d, tp, dense_tp, wb, awb, hit if moe else 0.0, kv_shard)
    attn_cold, ffn_cold = attn_cold * host_slowdown, ffn_cold * host_slowdown
    attn_side = proj + core + lm_head + norms + sampling + floor_attn + floor_small + attn_cold
    # data-parallel attention ranks wait for the busiest one at the next expert all-to-all
    dp_wait = attn_side * (1 / d.attention_balance - 1) if d.strategy == "ep" else 0.0
    attn_side += dp_wait
    expert_host *= host_slowdown
    ffn_side = dense + moe_t + imbalance + router + act_fn + floor_ffn + expert_host + ffn_cold
    if stop == "sides":  # a variant's sides need none of what follows: communication, fixed costs, memory
        return attn_side, ffn_side, lm_head + sampling

    # communication per step
    act = H * ACT_BYTES
    comm = comm_fixed = 0.0
    measured_calls = None  # the runtime's own collectives, on a profile that measured them
    if d.strategy == "tp" and d.collectives is not None:
        # the runtime's own collectives (step broadcast, embedding, 2 per layer, logits) at measured alpha-beta,
        # activations in the compute format as the runtime sends them
        calls = measured_comm.tensor_parallel_step(L, H, cost.vocab, tp, inst_tokens, out_tokens,
                                                   dtypes.nbytes(cdt), d.context)
        comm_fixed, comm = measured_comm.step_seconds(calls, d.collectives)
        measured_calls = calls
    elif d.strategy == "ep" and d.collectives is not None:
        # the runtime's expert-parallel collectives (step broadcast, 4 all-to-alls per MoE layer, the chunks' or
        # the logit rows' all-gather) at measured alpha-beta
        routed = group_tokens if moe else tokens * ep
        calls = measured_comm.expert_parallel_step(
            moe.layers if moe else 0, H, moe.top_k if moe else 1, ep, routed, out_tokens, dtypes.nbytes(cdt),
            d.context, data_parallel=d.attention != "replicated")
        # where the profile timed the runtime's whole dispatch and combine, each layer costs that
        comm_fixed, comm, measured_calls = measured_comm.expert_parallel_seconds(
            calls, d.collectives, moe.layers if moe else 0, math.ceil(routed / ep))
    elif d.strategy == "tp":
        comm_fixed = 2 * L * _collective_latency(d, tp)
        timed = _timed_all_reduce(d, tp, inst_tokens * act)
        if timed is None:
            comm = 2 * L * _all_reduce(d, tp, inst_tokens * act)
        else:  # the architecture's all-reduce kernel as timed at this size, beyond its small-message latency
            comm = 2 * L * max(0.0, timed - _collective_latency(d, tp))
    elif d.strategy == "ep" and moe:
        per_token = moe.top_k * H * (1 + ACT_BYTES)
        # the kernels are benchmarked per rank: a chip of several devices (a 910C's two dies) is that many ranks,
        # each dispatching its share of the chip's tokens at the same time over its own ports
        measured = (km.ep_low_latency(chip.arch, ep * chip.devices, tokens / chip.devices, H, moe.top_k, d.exclude)
                    if decode else None)
        if measured and measured[2]:  # the architecture's low-latency dispatch and combine, as benchmarked
            comm = moe.layers * (measured[0] + measured[1])
        elif measured:  # a measured latency floor, plus the bytes over the links
            comm_fixed = moe.layers * (measured[0] + measured[1])
            comm = moe.layers * _all_to_all(d, ep, tokens * per_token)
        elif decode:  # latency kernels: one message per routed expert, all over the NICs across domains
            comm_fixed = 2 * moe.layers * _collective_latency(d, ep)  # dispatch and combine
            comm = moe.layers * _all_to_all(d, ep, tokens * per_token)
        else:
            comm_fixed = 2 * moe.layers * _collective_latency(d, ep)
            comm = moe.layers * _throughput_all_to_all(d, ep, tokens, moe.top_k, H * (1 + ACT_BYTES))
    elif d.strategy == "afd" and d.collectives is not None:
        pass  # the exchange is timed with the schedule below (_afd_pipeline)
    elif d.strategy == "afd":
        # per layer an attention chip sends its tokens out (8-bit) and gets them back (16-bit); an FFN chip
        # handles A/F attention chips' worth of that traffic
        up, out, _ = _links(d, d.chips)
        link = up if d.chips <= _scale_up_domain(d) else out
        if not link:
            raise ModelchipError(f"{chip.id} has no network bandwidth in the catalog; cannot cost AFD traffic")
        per_chip = tokens * H * (1 + ACT_BYTES) * max(1.0, d.attn_chips / d.ffn_chips)
        comm = L * per_chip / link

    # fixed per-call costs: every op call, plus per sequence in each attention call
    host = (d.overhead_per_op_s * _op_calls(cost, d) + d.overhead_per_seq_s * L * b * tp
            + d.overhead_per_step_s + d.overhead_per_seq_step_s * b * tp) * host_slowdown
    launch = sh.launch
    floor = sh.kernel_floor
    # ranks reach each blocking collective from their own compute, not together: the first waits for the last
    # (measured on the profiled process group, cost/collectives.SyncWait)
    sync_wait = d.collectives.wait_seconds(measured_calls, attn_side + ffn_side) if measured_calls else 0.0
    tail = d.collectives.tail_seconds(measured_calls) if measured_calls else 0.0
    barrier = _ep_barrier_wait(sh.barrier_balance, attn_side + ffn_side, imbalance + dp_wait) if moe else 0.0
    comm_total = comm + comm_fixed + sync_wait + tail + barrier
    # AFD's micro-batches each stream their side's weights: a micro-batch of 1/m of the batch takes what a step
    # of 1/m of the batch takes on each side, not 1/m of the step (at decode sizes, nearly all of it). Measured
    # here: 1 attention + 1 FFN rank at batch 16 took 62.1 ms a step with 1 micro-batch and 65.2 ms with 2
    # (BENCHMARKS.md); the LM head and sampling still run once, on the whole batch
    rereads = 0.0
    m_afd = _micro_batch_count(d, tp * b) if d.strategy == "afd" else 1
    if m_afd > 1:
        part_attn, part_ffn, part_head = _sides(cost, d.but(batch=b / m_afd, microbatches=1))
        split_attn = m_afd * (part_attn - part_head) + lm_head + sampling
        split_ffn = m_afd * part_ffn
        rereads = max(0.0, split_attn - attn_side) + max(0.0, split_ffn - ffn_side)
        attn_side, ffn_side = max(attn_side, split_attn), max(ffn_side, split_ffn)
    afd_host = None
    if d.strategy == "afd" and d.collectives is not None:
        step, comm, afd_host = _afd_pipeline(cost, d, attn_side, ffn_side, lm_head + sampling, tp * b, inst_tokens,
                                             out_tokens, dtypes.nbytes(cdt), host_slowdown)
        bound = "attention" if attn_side >= ffn_side else "ffn"
    elif d.strategy == "afd":
        per_layer = max(attn_side / L, comm / L, ffn_side / L)
        fill = (attn_side + comm + ffn_side) / L / max(d.microbatches, 1)
        step = L * per_layer + fill
        bound = max((("attention", attn_side), ("network", comm), ("ffn", ffn_side)), key=lambda x: x[1])[0]
    else:
        compute = attn_side + ffn_side
        # ideal two-micro-batch overlap hides the smaller of compute and communication; off by default,
        # because the published decode and prefill runs sit near the sum (docs/validation.md)
        step = max(compute, comm_total) if (d.overlap and d.strategy == "ep") else compute + comm_total
        bound = "communication" if comm_total > compute else "compute"
    if stop == "step":
        return step
    draft = _draft_passes(cost, d, step) if decode and d.mtp else 0.0
    step += draft

    # memory per chip
    kv = b * tp * (d.context if decode else d.prompt_len) * cost.kv_bytes_per_token / kv_shard
    cap = sh.cap
    attn_w, expert_w, dense_w = sh.attn_w, sh.expert_w, sh.dense_w  # weights per chip
    if d.strategy == "afd":
        mem = {"attention_chip": {"weights": attn_w / 1e9, "kv_cache": kv / 1e9},
               "ffn_chip": {"weights": (expert_w + dense_w) / 1e9}}
        used = max(attn_w + kv, expert_w + dense_w)
    else:
        mem = {"weights": (attn_w + expert_w + dense_w) / 1e9, "kv_cache": kv / 1e9}
        used = attn_w + expert_w + dense_w + kv
    weights_w = used - kv
    kv_fraction = sh.kv_fraction
    if kv_fraction and d.strategy != "afd":  # the KV cache gets a fraction of what the weights leave
        cap = weights_w + (chip.memory_capacity.value - weights_w) * kv_fraction
    mem["usable"] = cap / 1e9
    if afd_host is not None:  # the schedule already ran each rank's host work where it falls
        host = afd_host
    else:
        step += host
    step += launch + floor
    # the host issues the step's operators while the device runs them: where issuing is slower, the device
    # idles for the difference (host-bound)
    dispatch_wait = max(0.0, sh.host_dispatch - step)
    step += dispatch_wait
    straggler = sh.straggler
    step += straggler
    gap = sh.gap
    step += gap
    offload = 0.0
    if d.weight_offload and used > cap and d.strategy != "afd":
        problem = _offload_problem(chip, used - cap, weights_w)
        if problem:
            return Prediction(False, f"weight offload: {problem}", None, None, b, None, used / 1e9, mem, {}, None,
                              "memory")
        mem["offloaded_weights"] = (used - cap) / 1e9
        offload = max(0.0, (used - cap) / chip.host_link.effective - step)
        step += offload
        used = cap
    breakdown = {"attention_proj": proj, "attention_core": core, "lm_head": lm_head, "norms": norms,
                 "sampling": sampling, "dense_ffn": dense, "moe": moe_t, "moe_imbalance": imbalance,
                 "router": router, "moe_expert_host": expert_host, "act_fn": act_fn, "dp_attention_wait": dp_wait,
                 "cold_op_host": attn_cold + ffn_cold,
                 "communication": comm,
                 "collective_latency": comm_fixed, "sync_wait": sync_wait, "collective_tail": tail,
                 "host_overhead": host, "launch": launch,
                 "kernel_floor": floor,
                 "gemm_call_floor": floor_attn + floor_ffn,
                 "small_kernel_floor": floor_small, "host_dispatch_wait": dispatch_wait,
                 "afd_straggler_wait": straggler, "step_gap": gap, "ep_barrier_wait": barrier,
                 "afd_micro_batch_rereads": rereads,
                 "weight_offload": offload,
                 "mtp_draft": draft}
    breakdown = {k: v * 1e3 for k, v in breakdown.items()}
    if used > cap:
        policy = (f"KV cache limited to {kv_fraction:.0%} of the memory the weights leave" if kv_fraction else
                  f"{chip.memory_capacity.value / 1e9:.0f} GB less {eff.memory_reserved:.0%} reserved")
        return Prediction(False, f"out of memory: needs {used / 1e9:.1f} GB per chip, {cap / 1e9:.1f} GB usable "
                          f"({policy})",
                          None, None, b, None, used / 1e9, mem, breakdown, None, "memory")
    sequences = b * (attn_chips if d.strategy == "afd" else d.chips)  # sequences in flight on the deployment
    if decode:
        tokens_per_s = sequences * sh.tokens_per_step / step / d.chips
        tpot, ttft = step / sh.tokens_per_step * 1e3, None
    else:
        tokens_per_s = sequences * q / step / d.chips  # computed tokens: cached prefixes are not counted
        tpot, ttft = None, step * 1e3
    price = chip.usd_per_hour
    usd = price / 3600 / tokens_per_s * 1e6 if price else None
    return Prediction(True, "", tpot, ttft, b, tokens_per_s, used / 1e9, mem, breakdown, usd, bound)


def _afd_pipeline(cost: ModelCost, d: Deployment, attn_side: float, ffn_side: float, head: float,
                  sequences: float, tokens: float, logit_rows: float, act_bytes: float,
                  host_slowdown: float) -> tuple[float, float, float]:
    """(step seconds, seconds attention rank 0 waits on the FFN side and in its own collectives, its host
    seconds) of an AFD decode step on a profile with measured collectives, scheduled as the runtime runs it
    (cost/afd_schedule.py): a layer costs its slower side when the micro-batches keep both busy, and the round
    trip attention, wire, FFN, wire when they cannot (one micro-batch: no overlap at all), and on a shared
    device a side of one rank computes at its measured solo rate while the other waits. Each side's work per
    layer and micro-batch is its share of the step's compute, its op calls' host cost (every op runs once per
    micro-batch) and its collectives; messages cost the measured send/recv fit."""
    L, H, fit = cost.layers, cost.hidden, d.collectives
    m = _micro_batch_count(d, sequences)
    calls = measured_comm.afd_step(L, H, cost.vocab, d.attn_chips, d.ffn_chips, m, tokens, logit_rows, act_bytes,
                                   d.context, bool(cost.moe and cost.moe.shared_params),
                                   cost.moe.layers if cost.moe else 0)
    seconds = lambda cs: sum(measured_comm.step_seconds(cs, fit))  # noqa: E731
    per_op = d.overhead_per_op_s * host_slowdown
    attn_ops = (cost.layer_op_calls - cost.ffn_op_calls) / L
    # one micro-batch's work on each side in one layer: its share of the side's compute, and host work: its op
    # calls (every op runs once per micro-batch), the side's own collectives, and starting its messages
    # (measured: broadcast_issue_s; attention rank 0 starts its send to the FFN ranks and the receive of their
    # output, the FFN leader its send back)
    issue = fit.broadcast_issue_s * host_slowdown
    attention = afd_schedule.Job(seconds(calls.attention) / L / m + per_op * attn_ops
                                 + d.overhead_per_seq_s * host_slowdown * sequences / m + 2 * issue,
                                 (attn_side - head) / L / m)
    ffn = afd_schedule.Job(seconds(calls.ffn) / L / m + per_op * cost.ffn_op_calls / L + issue, ffn_side / L / m)
    # each message at the send/recv fit plus the measured tail of the broadcasts that carry it (runtime/
    # distributed/afd.py); rank 0 sends to every FFN rank
    tail = fit.tail_of("broadcast")
    out = (fit.fit("send_recv").seconds(calls.to_ffn.nbytes) + tail) * d.ffn_chips
    back = fit.fit("send_recv").seconds(calls.from_ffn.nbytes) + tail
    # a side of one rank computes alone while the other side waits on it (measured: rank_compute's solo ratio at
    # the rows of one micro-batch)
    alone = fit.solo_speedup(tokens / m)
    solo = (alone if d.attn_chips == 1 else 1.0, alone if d.ffn_chips == 1 else 1.0)
    played = afd_schedule.play(L, m, attention, ffn, out, back, *solo)
    # embedding, final norm, LM head and sampling, and the step's own bookkeeping, once on rank 0 while the FFN
    # side waits
    step_host = (4 * d.overhead_per_op_s + d.overhead_per_step_s + d.overhead_per_seq_step_s * sequences) \
        * host_slowdown
    once = seconds(calls.step) + head / solo[0] + step_host
    host = (per_op * attn_ops + 2 * issue) * m * L + d.overhead_per_seq_s * host_slowdown * sequences * L + step_host
    wait = played.end - played.attention_busy + seconds(calls.step)
    return played.end + once, wait, host


def _offload_problem(chip: Chip, excess: float, weights: float) -> str:
    """Why `excess` bytes of weights cannot live in host memory ("" when they can)."""
    if chip.host_link.effective is None or chip.host_memory is None:
        return f"{chip.id} has no host link and host memory in the catalog"
    if excess > weights:
        return f"the KV cache alone does not fit ({(excess - weights) / 1e9:.1f} GB over)"
    if excess > chip.host_memory.value:
        return f"{excess / 1e9:.1f} GB to offload, {chip.host_memory.value / 1e9:.0f} GB of host memory per chip"
    return ""


def max_batch_by_memory(cost: ModelCost, d: Deployment) -> int:
    """Largest per-chip batch whose KV cache still fits (0 if the weights alone do not)."""
    lo, hi = 0, 1
    while hi < 1 << 22 and evaluate(cost, _with_batch(d, hi)).feasible:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if evaluate(cost, _with_batch(d, mid)).feasible else (lo, mid)
    return lo


def _with_batch(d: Deployment, batch: int) -> Deployment:
    return d.but(batch=batch)  # the copies share the configuration's batch-independent terms (_shape)


def best_batch_for_slo(cost: ModelCost, d: Deployment, tpot_slo_ms: float) -> Prediction:
    """The largest per-chip batch that fits in memory and meets the TPOT target."""
    if tpot_slo_ms <= 0:
        raise ModelchipError("the TPOT target must be positive")
    top = max_batch_by_memory(cost, d)
    if top == 0:
        return evaluate(cost, _with_batch(d, 1))
    lo, hi = 0, top + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        p = evaluate(cost, _with_batch(d, mid))
        lo, hi = (mid, hi) if p.tpot_ms <= tpot_slo_ms else (lo, mid)
    if lo == 0:
        p = evaluate(cost, _with_batch(d, 1))
        p.feasible = False
        p.reason = f"misses the TPOT target: {p.tpot_ms:.1f} ms at batch 1 > {tpot_slo_ms} ms"
        return p
    return evaluate(cost, _with_batch(d, lo))

