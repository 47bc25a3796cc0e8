"""FFN blocks: a gated (SwiGLU) MLP, and a mixture of such experts with optional shared experts.

Cost per token: modelchip.cost.ffn (2 x 3 H (top_k I + I_shared) FLOPs, plus the router's 2 H E).
"""

from __future__ import annotations

import torch

from modelchip.runtime.distributed.tensor_parallel import Shard, even_split, tp_of
from modelchip.runtime.layers.base import Layer, Slot
from modelchip.spec.model import FFNSpec


class GatedMLP(Layer):
    """down(silu(gate x) * up x), with gate and up stored stacked so one matmul computes both."""

    LINEAR_WEIGHTS = ("gate_up_proj", "down_proj")

    def __init__(self, ops, hidden: int, width: int, dtype: torch.dtype, bias: bool = False,
                 tensor_parallel: bool = False):
        super().__init__(ops, dtype)
        # tensor parallel: gate/up column-parallel (this rank's slice of the width), down row-parallel.
        # Shared experts of a MoE stay whole (tp_size 1): MoE families are refused under TP for now.
        self.tp_rank, self.tp_size = tp_of(ops) if tensor_parallel else (0, 1)
        self.full_width = width
        self.start, stop = even_split(width, self.tp_rank, self.tp_size, "MLP intermediate size")
        self.width = width = stop - self.start
        self.gate_up_proj = self.p(2 * width, hidden)
        self.down_proj = self.p(hidden, width)
        self.gate_up_bias = self.p(2 * width) if bias else None  # Llama's mlp_bias
        self.down_bias = self.p(hidden) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.ops.linear(x, self.gate_up_proj, self.gate_up_bias)
        if self.tp_size == 1:
            return self.ops.linear(self.ops.silu_and_mul(gate_up), self.down_proj, self.down_bias)
        bias = self.down_bias if self.tp_rank == 0 else None  # added once, before the sum
        return self.ops.comm.all_reduce(self.ops.linear(self.ops.silu_and_mul(gate_up), self.down_proj, bias))

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
    """Router -> top-k experts (weighted sum) + shared experts, as the spec's FFNSpec describes."""

    def __init__(self, ops, hidden: int, spec: FFNSpec, dtype: torch.dtype):
        super().__init__(ops, dtype)
        self.spec = spec
        e, width = spec.num_experts, spec.intermediate_size
        self.width = width
        self.gate = self.p(e, hidden)
        self.correction_bias = self.p(e) if spec.router_bias else None
        self.experts_gate_up = self.p(e, 2 * width, hidden)
        self.experts_down = self.p(e, hidden, width)
        self.shared = (GatedMLP(ops, hidden, spec.shared_intermediate_size, dtype)
                       if spec.shared_intermediate_size else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        logits = self.ops.linear(x.float(), self.gate.float())  # routing decides discretely: keep it in fp32
        weights, ids = self.ops.moe_route(
            logits, s.top_k, s.scoring, s.norm_topk_prob, s.n_group, s.topk_group,
            None if self.correction_bias is None else self.correction_bias.float(), s.routed_scaling_factor)
        out = self.ops.moe_experts(x, self.experts_gate_up, self.experts_down, weights, ids)
        return out + self.shared(x) if self.shared is not None else out

    def slots(self, prefix: str, flavor: str = "hf") -> dict[str, Slot]:
        w = self.width
        if flavor == "step3":  # experts stored fused over the expert dim, router under moe.gate
            out = {
                f"{prefix}.moe.gate.weight": Slot(self.gate),
                f"{prefix}.moe.gate_proj.weight": Slot(self.experts_gate_up, (slice(None), slice(0, w))),
                f"{prefix}.moe.up_proj.weight": Slot(self.experts_gate_up, (slice(None), slice(w, 2 * w))),
                f"{prefix}.moe.down_proj.weight": Slot(self.experts_down),
            }
            if self.shared is not None:
                out.update(self.shared.slots(f"{prefix}.share_expert"))
            return out
        block, names = (f"{prefix}.block_sparse_moe", ("w1", "w3", "w2")) if flavor == "mixtral" else \
            (f"{prefix}.mlp", ("gate_proj", "up_proj", "down_proj"))
        out = {f"{block}.gate.weight": Slot(self.gate)}
        if self.correction_bias is not None:
            out[f"{block}.gate.e_score_correction_bias"] = Slot(self.correction_bias)
        for e in range(self.spec.num_experts):
            out[f"{block}.experts.{e}.{names[0]}.weight"] = Slot(self.experts_gate_up, (e, slice(0, w)))
            out[f"{block}.experts.{e}.{names[1]}.weight"] = Slot(self.experts_gate_up, (e, slice(w, 2 * w)))
            out[f"{block}.experts.{e}.{names[2]}.weight"] = Slot(self.experts_down, (e,))
        if self.shared is not None:
            out.update(self.shared.slots(f"{block}.shared_experts"))
        return out
