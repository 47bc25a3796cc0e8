"""FFN blocks: a gated (SwiGLU) MLP, and a mixture of such experts with optional shared experts.

Cost per token: modelchip.cost.ffn (2 x 3 H (top_k I + I_shared) FLOPs, plus the router's 2 H E).
Over several ranks (docs/parallel.md): tensor parallel splits every expert's width as a dense MLP's; expert
parallel shards the experts whole (runtime/distributed/expert_parallel.py). The router is replicated.
"""

from __future__ import annotations

import torch

from modelchip.runtime.distributed.expert_parallel import expert_range, run_experts
from modelchip.runtime.distributed.layout import dp_of, ep_of
from modelchip.runtime.distributed.tensor_parallel import Shard, even_split, tp_of
from modelchip.runtime.layers.base import Layer, Slot
from modelchip.spec.model import FFNSpec


class GatedMLP(Layer):
    """down(silu(gate x) * up x), with gate and up stored stacked so one matmul computes both."""

    LINEAR_WEIGHTS = ("gate_up_proj", "down_proj")

    def __init__(self, ops, hidden: int, width: int, dtype: torch.dtype, bias: bool = False,
                 tensor_parallel: bool = False):
        super().__init__(ops, dtype)
        # tensor parallel: gate/up column-parallel (this rank's slice of the width), down row-parallel
        self.tp_rank, self.tp_size = tp_of(ops) if tensor_parallel else (0, 1)
        self.full_width = width
        self.start, stop = even_split(width, self.tp_rank, self.tp_size, "MLP intermediate size")
        self.width = width = stop - self.start
        self.gate_up_proj = self.p(2 * width, hidden)
        self.down_proj = self.p(hidden, width)
        self.gate_up_bias = self.p(2 * width) if bias else None  # Llama's mlp_bias
        self.down_bias = self.p(hidden) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.partial(x)
        return out if self.tp_size == 1 else self.ops.comm.all_reduce(out)

    def partial(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's share of the output before the tensor-parallel sum (the whole output on one rank)."""
        gate_up = self.ops.linear(x, self.gate_up_proj, self.gate_up_bias)
        bias = self.down_bias if self.tp_rank == 0 else None  # added once, before the sum
        return self.ops.linear(self.ops.silu_and_mul(gate_up), self.down_proj, bias)

    def slots(self, prefix: str, names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")) -> dict:
        gate, up, down = names
        w = self.width
        rows = cols = None
        if self.tp_size > 1:  # this rank's rows of gate and up, its columns of down
            rows = Shard(0, self.start, self.start + w, self.full_width)
            cols = Shard(1, self.start, self.start + w, self.full_width)
        out = {
            f"{prefix}.{gate}.weight": Slot(self.gate_up_proj, (slice(0, w),), rows),
            f"{prefix}.{up}.weight": Slot(self.gate_up_proj, (slice(w, 2 * w),), rows),
            f"{prefix}.{down}.weight": Slot(self.down_proj, source=cols),
        }
        if self.down_bias is not None:
            out |= {f"{prefix}.{gate}.bias": Slot(self.gate_up_bias, (slice(0, w),), rows),
                    f"{prefix}.{up}.bias": Slot(self.gate_up_bias, (slice(w, 2 * w),), rows),
                    f"{prefix}.{down}.bias": Slot(self.down_bias)}
        return out


class MoE(Layer):
    """Router -> top-k experts (weighted sum) + shared experts, as the spec's FFNSpec describes.

    Expert parallel: this rank's experts [expert_start, expert_start + E/M), whole. Otherwise, under tensor
    parallelism, every expert's slice [width_start, width_start + I/N) of its width. Shared experts split like a
    dense MLP when attention is tensor parallel, and are whole otherwise."""

    def __init__(self, ops, hidden: int, spec: FFNSpec, dtype: torch.dtype):
        super().__init__(ops, dtype)
        self.spec = spec
        self.ep_rank, self.ep_size = ep_of(ops)
        self.tp_rank, self.tp_size = (0, 1) if self.ep_size > 1 else tp_of(ops)  # EP replaces TP for experts
        self.replicated_tokens = dp_of(ops)[1] == 1  # without DP attention every rank holds every token
        e, width = spec.num_experts, spec.intermediate_size
        self.expert_start, stop = expert_range(e, self.ep_rank, self.ep_size)
        self.full_width = width
        self.width_start, width_stop = even_split(width, self.tp_rank, self.tp_size, "MoE expert intermediate size")
        self.width = w = width_stop - self.width_start
        self.gate = self.p(e, hidden)
        self.correction_bias = self.p(e) if spec.router_bias else None
        self.experts_gate_up = self.p(stop - self.expert_start, 2 * w, hidden)
        self.experts_down = self.p(stop - self.expert_start, hidden, w)
        self.shared = (GatedMLP(ops, hidden, spec.shared_intermediate_size, dtype, tensor_parallel=True)
                       if spec.shared_intermediate_size else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, ops = self.spec, self.ops
        if not x.shape[0]:  # a data-parallel rank with no tokens this step still computes the others' rows
            none = torch.zeros(0, s.top_k, dtype=torch.long, device=x.device)
            return run_experts(ops, x, none.float(), none, self.experts_gate_up, self.experts_down, False)
        logits = ops.linear(x.float(), self.gate.float())  # routing decides discretely: keep it in fp32
        weights, ids = ops.moe_route(
            logits, s.top_k, s.scoring, s.norm_topk_prob, s.n_group, s.topk_group,
            None if self.correction_bias is None else self.correction_bias.float(), s.routed_scaling_factor)
        if self.ep_size > 1:
            out = run_experts(ops, x, weights, ids, self.experts_gate_up, self.experts_down, self.replicated_tokens)
            return out + self.shared(x) if self.shared is not None else out
        out = ops.moe_experts(x, self.experts_gate_up, self.experts_down, weights, ids)
        if self.tp_size == 1:
            return out + self.shared(x) if self.shared is not None else out
        # tensor parallel: routed and shared partial sums over this rank's width, summed in one all-reduce
        if self.shared is not None:
            out = out + self.shared.partial(x)
        return ops.comm.all_reduce(out)

    def _sources(self, fused: bool) -> tuple[Shard | None, Shard | None]:
        """The shard of a gate/up and of a down checkpoint tensor this rank reads (fused: [E, ...] stacks)."""
        lead = 1 if fused else 0
        if self.ep_size > 1 and fused:
            whole = Shard(0, self.expert_start, self.expert_start + self.experts_down.shape[0],
                          self.spec.num_experts)
            return whole, whole
        if self.tp_size == 1:
            return None, None
        start, stop, full = self.width_start, self.width_start + self.width, self.full_width
        return Shard(lead, start, stop, full), Shard(lead + 1, start, stop, full)

    def slots(self, prefix: str, flavor: str = "hf") -> dict[str, Slot | None]:
        """Checkpoint names -> slots; None for an expert another rank holds (expert parallel: never read here)."""
        w = self.width
        if flavor == "step3":  # experts stored fused over the expert dim, router under moe.gate
            rows, cols = self._sources(fused=True)
            out = {
                f"{prefix}.moe.gate.weight": Slot(self.gate),
                f"{prefix}.moe.gate_proj.weight": Slot(self.experts_gate_up, (slice(None), slice(0, w)), rows),
                f"{prefix}.moe.up_proj.weight": Slot(self.experts_gate_up, (slice(None), slice(w, 2 * w)), rows),
                f"{prefix}.moe.down_proj.weight": Slot(self.experts_down, source=cols),
            }
            if self.shared is not None:
                out.update(self.shared.slots(f"{prefix}.share_expert"))
            return out
        block, names = (f"{prefix}.block_sparse_moe", ("w1", "w3", "w2")) if flavor == "mixtral" else \
            (f"{prefix}.mlp", ("gate_proj", "up_proj", "down_proj"))
        out: dict[str, Slot | None] = {f"{block}.gate.weight": Slot(self.gate)}
        if self.correction_bias is not None:
            out[f"{block}.gate.e_score_correction_bias"] = Slot(self.correction_bias)
        rows, cols = self._sources(fused=False)
        held = range(self.expert_start, self.expert_start + self.experts_down.shape[0])
        for e in range(self.spec.num_experts):
            i = e - self.expert_start
            gate, up, down = (f"{block}.experts.{e}.{n}.weight" for n in names)
            if e not in held:
                out |= {gate: None, up: None, down: None}
                continue
            out[gate] = Slot(self.experts_gate_up, (i, slice(0, w)), rows)
            out[up] = Slot(self.experts_gate_up, (i, slice(w, 2 * w)), rows)
            out[down] = Slot(self.experts_down, (i,), cols)
        if self.shared is not None:
            out.update(self.shared.slots(f"{block}.shared_experts"))
        return out
