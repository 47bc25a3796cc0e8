"""Attention-FFN disaggregation (AFD), as Step-3 deploys it: attention ranks and FFN ranks exchange activations
every layer, with the step's batch split into micro-batches so the two sides compute at the same time.

Ranks 0..A-1 are attention ranks: embedding, every layer's attention and norms, the KV cache, the final norm and
LM head (A > 1: one tensor-parallel group, heads and vocabulary split as in tensor_parallel.py). Ranks A..A+F-1
are FFN ranks: every layer's FFN and nothing else (F > 1: the dense MLP tensor-parallel over the FFN ranks,
reduced among them). Each side reads only its tensors of the checkpoint (and, when split, only its shard).

Per layer and micro-batch of n tokens: attention rank 0 sends the post-attention-norm hidden states [n, H] to
every FFN rank; FFN rank A (the FFN leader) sends the FFN output [n, H] back to every attention rank, which adds
it to the residual. Sends and receives are asynchronous (isend/irecv), so while the FFN ranks compute micro-batch
i of layer l the attention ranks compute micro-batch i+1 of layer l (or i-1 of layer l+1). docs/parallel.md has
the layout, the bytes per layer and the schedule.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from modelchip.errors import ModelchipError
from modelchip.runtime.contract import AttentionMetadata
from modelchip.runtime.distributed.layout import ParallelLayout
from modelchip.runtime.distributed.tensor_parallel import Shard, check_family, even_split, split_heads, tp_of
from modelchip.runtime.layers.base import Layer, Slot, prepare_linear_weights
from modelchip.runtime.layers.ffn import GatedMLP, MoE
from modelchip.runtime.models.decoder import FAMILIES, DecoderLM, build_ffn, ffn_slots
from modelchip.spec.model import FFNSpec, ModelSpec

DEFAULT_MICRO_BATCHES = 2
# a layer's FFN tensors in every family's checkpoint naming (hf/mixtral/step3; decoder.ffn_slots writes them)
_FFN_TENSOR = re.compile(r"model\.layers\.\d+\.(mlp|block_sparse_moe|moe|share_expert)\.")
_EXPERT_TENSOR = re.compile(r"model\.layers\.(\d+)\.(mlp|block_sparse_moe)\.experts\.(\d+)\.")


@dataclass(frozen=True)
class AFDConfig:
    attention_ranks: int
    ffn_ranks: int
    micro_batches: int = DEFAULT_MICRO_BATCHES

    @property
    def world_size(self) -> int:
        return self.attention_ranks + self.ffn_ranks

    @property
    def ffn_leader(self) -> int:
        """The FFN rank that sends the FFN output back (every FFN rank holds the whole of it)."""
        return self.attention_ranks


def make_config(afd: tuple[int, int] | None, micro_batches: int = DEFAULT_MICRO_BATCHES,
                tensor_parallel_size: int = 1) -> AFDConfig | None:
    """Check the user's (attention ranks, FFN ranks); None when AFD is off."""
    if afd is None:
        return None
    try:
        attention, ffn = (int(n) for n in afd)
    except (TypeError, ValueError) as exc:
        raise ModelchipError(f"afd must be (attention ranks, FFN ranks), got {afd!r}") from exc
    if attention < 1 or ffn < 1:
        raise ModelchipError(f"attention-FFN disaggregation needs at least one attention rank and one FFN rank, "
                             f"got {attention} attention and {ffn} FFN ranks")
    if micro_batches < 1:
        raise ModelchipError(f"afd micro-batches must be at least 1, got {micro_batches}")
    if tensor_parallel_size != 1:
        raise ModelchipError("--tensor-parallel-size and attention-FFN disaggregation are exclusive: with AFD the "
                             "attention ranks are one tensor-parallel group of --afd-attention-ranks and the FFN "
                             "ranks another of --afd-ffn-ranks")
    from modelchip.runtime.distributed import launch

    env = launch.torchrun_env()
    if env is not None and env[1] != attention + ffn:
        raise ModelchipError(f"attention-FFN disaggregation over {attention} + {ffn} ranks, but the launcher "
                             f"started WORLD_SIZE={env[1]}; they must match")
    return AFDConfig(attention, ffn, micro_batches)


class Role:
    """This rank's side of an AFD run: its side's process group (attached to the backend as `ops.comm`, so
    tensor parallelism within a side works as it does without AFD) and the world communicator the activations
    travel on."""

    def __init__(self, config: AFDConfig, rank: int, ops):
        import torch.distributed as dist

        from modelchip.runtime.distributed.communicator import make_communicator

        self.config, self.rank = config, rank
        self.is_attention = rank < config.attention_ranks
        # every rank makes both groups, in the same order (torch.distributed requires it)
        groups = [dist.new_group(list(range(config.attention_ranks))),
                  dist.new_group(list(range(config.attention_ranks, config.world_size)))]
        ops.attach_group(groups[0] if self.is_attention else groups[1])
        self.p2p = make_communicator(ops.backend, None)
        self.seconds = 0.0  # attention rank: wall time spent waiting for FFN outputs (communication + FFN)
        # where the communicator broadcasts (torch.distributed's does), each direction of the exchange is a
        # broadcast on a group of its own: rank 0 to the FFN ranks, the FFN leader to the attention ranks. Its
        # handles can be polled, where gloo's point-to-point ones always block and let the core go idle
        # (communicator.spin_budget says what that costs)
        self.to_ffn = self.from_ffn = None
        if hasattr(self.p2p, "ibroadcast"):
            ffn = list(range(config.attention_ranks, config.world_size))
            attention = list(range(config.attention_ranks))
            out_group = dist.new_group([0, *ffn])  # every rank, in the same order
            back_group = dist.new_group([*attention, config.ffn_leader])
            if rank == 0 or not self.is_attention:
                self.to_ffn = make_communicator(ops.backend, out_group)
            if self.is_attention or rank == config.ffn_leader:
                self.from_ffn = make_communicator(ops.backend, back_group)

    @property
    def exchange_calls(self) -> int:
        """Messages this rank has sent and received on the activation exchange."""
        return sum(c.calls for c in (self.p2p, self.to_ffn, self.from_ffn) if c is not None)

    @property
    def side(self) -> str:
        return "attention" if self.is_attention else "FFN"


def is_ffn_tensor(name: str) -> bool:
    return _FFN_TENSOR.match(name) is not None


def tensors_for(model: Layer, tensors: Iterable) -> Iterable:
    """Only the checkpoint tensors of this side (and, on an FFN rank, of its experts); the rest are never read
    (safetensors tensors are lazy)."""
    if isinstance(model, AttentionLM):
        return ((name, t) for name, t in tensors if not is_ffn_tensor(name))
    return ((name, t) for name, t in tensors if is_ffn_tensor(name) and model.holds(name))


def check_split(spec: ModelSpec, config: AFDConfig) -> None:
    """Refuse, naming the option and the number, sizes a side cannot split: A attention ranks split heads as
    tensor parallelism does, F FFN ranks split dense widths and the shared experts' width, and the experts whole.
    The same arithmetic the layers do when they build their shards, so a run (or a conformance check) can refuse
    before any process starts."""
    a, f = config.attention_ranks, config.ffn_ranks
    splits = []  # (option, size, the layer's own split function, its arguments)
    for layer in spec.layers:
        attn, ffn = layer.attention, layer.ffn
        if a > 1 and attn.kind == "mla":
            splits.append(("--afd-attention-ranks", a, even_split, (attn.num_heads, 0, a, "number of attention heads")))
        elif a > 1:
            splits.append(("--afd-attention-ranks", a, split_heads, (attn.num_heads, attn.num_kv_heads, 0, a)))
        if f > 1 and ffn.kind == "moe":
            splits.append(("--afd-ffn-ranks", f, even_split, (ffn.num_experts, 0, f, "number of experts")))
            if ffn.shared_intermediate_size:
                splits.append(("--afd-ffn-ranks", f, even_split,
                               (ffn.shared_intermediate_size, 0, f, "MLP intermediate size")))
        elif f > 1:
            splits.append(("--afd-ffn-ranks", f, even_split, (ffn.intermediate_size, 0, f, "MLP intermediate size")))
    for option, size, split, args in splits:
        try:
            split(*args)
        except ModelchipError as exc:
            raise ModelchipError(f"{option} {size} cannot split {spec.name}: {exc}") from exc


def build_model(ops, spec: ModelSpec, dtype: torch.dtype, role: Role) -> Layer:
    check_split(spec, role.config)
    return AttentionLM(ops, spec, dtype, role) if role.is_attention else FFNStack(ops, spec, dtype, role)


def micro_batches(query_start_loc: list[int], count: int) -> list[tuple[int, int]]:
    """Split a step's sequences into up to `count` contiguous groups [first, stop) with about equal token
    counts (never an empty group). Both sides compute the same split from the step's offsets."""
    seqs = len(query_start_loc) - 1
    count = max(1, min(count, seqs))
    total = query_start_loc[-1]
    bounds, seq = [0], 0
    for k in range(1, count):
        target = total * k / count
        seq = max(seq + 1, bounds[-1] + 1)
        while seq < seqs - (count - k) and query_start_loc[seq] < target:
            seq += 1
        bounds.append(seq)
    bounds.append(seqs)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _sub_meta(meta: AttentionMetadata, offsets: list[int], first: int, stop: int) -> AttentionMetadata:
    t0, t1 = offsets[first], offsets[stop]
    return AttentionMetadata(meta.query_start_loc[first:stop + 1] - t0, meta.context_lens[first:stop],
                             meta.block_tables[first:stop], meta.slot_mapping[t0:t1], meta.block_size)


class _Pending:
    """An FFN output on its way back: the receive (and, on attention rank 0, the sends) in flight."""

    def __init__(self, out: torch.Tensor, works: list, sent: torch.Tensor | None):
        self.out, self.works, self.sent = out, works, sent  # `sent` stays alive until its sends finish


class Link:
    """The attention side's end of the per-layer exchange."""

    def __init__(self, role: Role):
        self.role = role
        self.asynchronous = hasattr(role.p2p, "isend") and hasattr(role.p2p, "irecv")

    def start(self, x: torch.Tensor) -> _Pending:
        """Send x [n, H] (the post-attention-norm hidden states) to the FFN ranks; post the receive of their
        output. Blocking communicators (no isend) exchange at once, which is correct but overlaps nothing."""
        cfg, p2p = self.role.config, self.role.p2p
        x = x.contiguous()
        out = torch.empty_like(x)
        role = self.role
        if role.from_ffn is not None:
            works = [role.to_ffn.ibroadcast(x, 0)] if role.rank == 0 else []
            works.append(role.from_ffn.ibroadcast(out, role.from_ffn.world_size - 1))  # the leader ranks last
            return _Pending(out, works, x)
        ffn_ranks = range(cfg.attention_ranks, cfg.world_size) if self.role.rank == 0 else ()
        if not self.asynchronous:
            for r in ffn_ranks:
                p2p.send(x, r)
            p2p.recv(out, cfg.ffn_leader)
            return _Pending(out, [], None)
        works = [p2p.isend(x, r) for r in ffn_ranks]
        works.append(p2p.irecv(out, cfg.ffn_leader))
        return _Pending(out, works, x)

    def finish(self, pending: _Pending) -> torch.Tensor:
        start = time.perf_counter()
        for w in pending.works:
            w.wait()
        self.role.seconds += time.perf_counter() - start
        return pending.out


class RemoteFFN(Layer):
    """Where a layer's FFN sits on an attention rank: no weights, its output comes from the FFN ranks."""

    def __init__(self, ops, dtype: torch.dtype, link: Link):
        super().__init__(ops, dtype)
        self.link = link

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.link.finish(self.link.start(x))


class AttentionLM(DecoderLM):
    """The attention ranks' model: DecoderLM without FFN weights, whose forward pipelines micro-batches."""

    def __init__(self, ops, spec: ModelSpec, dtype: torch.dtype, role: Role):
        attention = role.config.attention_ranks
        if attention > 1:
            try:
                check_family(spec, ParallelLayout(tensor_parallel_size=attention))
            except ModelchipError as exc:
                raise ModelchipError(f"--afd-attention-ranks {attention} splits attention by tensor parallelism, "
                                     f"which does not cover this model yet ({exc}); use --afd-attention-ranks 1"
                                     ) from exc
        self.role, self.link = role, Link(role)  # before DecoderLM builds the layers (`_remote_ffn` reads them)
        super().__init__(ops, spec, dtype)

    def _remote_ffn(self, index: int) -> Layer:
        return RemoteFFN(self.ops, self.dtype, self.link)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                caches: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        offsets = meta.query_start_loc.tolist()
        parts = [(slice(offsets[a], offsets[b]), _sub_meta(meta, offsets, a, b))
                 for a, b in micro_batches(offsets, self.role.config.micro_batches)]
        h = self._embed(ids)
        hs = [h[rows] for rows, _ in parts]
        pending: list[_Pending | None] = [None] * len(parts)
        for layer, cache in zip(self.layers, caches, strict=True):
            for i, (rows, sub) in enumerate(parts):
                # micro-batch i's FFN output of the previous layer has had micro-batches i+1.. of attention to
                # arrive in; then this layer's attention for it, and off to the FFN ranks again
                x = hs[i] if pending[i] is None else hs[i] + self.link.finish(pending[i])
                x = x + layer.self_attn(layer.input_layernorm(x), positions[rows], sub, cache)
                hs[i] = x
                pending[i] = self.link.start(layer.post_attention_layernorm(x))
        hs = [x + self.link.finish(p) for x, p in zip(hs, pending, strict=True)]
        return self.norm(torch.cat(hs) if len(hs) > 1 else hs[0])


class ExpertShardMoE(MoE):
    """A MoE layer over the FFN ranks: each holds experts [first, first + local) (expert parallel), the router
    whole and its slice of the shared experts' width (tensor parallel). Every FFN rank receives every token, so
    no dispatch is needed: each computes its experts' share (tokens routed elsewhere weigh 0) and an all-reduce
    over the FFN ranks sums the shares."""

    def __init__(self, ops, hidden: int, spec: FFNSpec, dtype: torch.dtype):
        Layer.__init__(self, ops, dtype)  # not MoE.__init__: it would allocate every expert
        self.spec, self.width = spec, spec.intermediate_size
        rank, size = tp_of(ops)
        self.first, stop = even_split(spec.num_experts, rank, size, "number of experts")
        self.local = stop - self.first
        self.gate = self.p(spec.num_experts, hidden)
        self.correction_bias = self.p(spec.num_experts) if spec.router_bias else None
        self.experts_gate_up = self.p(self.local, 2 * self.width, hidden)
        self.experts_down = self.p(self.local, hidden, self.width)
        self.shared = (GatedMLP(ops, hidden, spec.shared_intermediate_size, dtype, tensor_parallel=True)
                       if spec.shared_intermediate_size else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        logits = self.ops.linear(x.float(), self.gate.float())
        weights, ids = self.ops.moe_route(
            logits, s.top_k, s.scoring, s.norm_topk_prob, s.n_group, s.topk_group,
            None if self.correction_bias is None else self.correction_bias.float(), s.routed_scaling_factor)
        local = ids - self.first
        mine = (local >= 0) & (local < self.local)
        part = self.ops.moe_experts(x, self.experts_gate_up, self.experts_down,
                                    torch.where(mine, weights, torch.zeros_like(weights)),
                                    torch.where(mine, local, torch.zeros_like(local)))
        out = self.ops.comm.all_reduce(part)
        return out + self.shared(x) if self.shared is not None else out

    def slots(self, prefix: str, flavor: str = "hf") -> dict[str, Slot]:
        w, first, stop, experts = self.width, self.first, self.first + self.local, self.spec.num_experts
        if flavor == "step3":  # experts fused over dim 0: this rank reads rows [first, stop) of each
            rows = Shard(0, first, stop, experts)
            out = {
                f"{prefix}.moe.gate.weight": Slot(self.gate),
                f"{prefix}.moe.gate_proj.weight": Slot(self.experts_gate_up, (slice(None), slice(0, w)), rows),
                f"{prefix}.moe.up_proj.weight": Slot(self.experts_gate_up, (slice(None), slice(w, 2 * w)), rows),
                f"{prefix}.moe.down_proj.weight": Slot(self.experts_down, source=rows),
            }
            if self.shared is not None:
                out.update(self.shared.slots(f"{prefix}.share_expert"))
            return out
        block, names = (f"{prefix}.block_sparse_moe", ("w1", "w3", "w2")) if flavor == "mixtral" else \
            (f"{prefix}.mlp", ("gate_proj", "up_proj", "down_proj"))
        out = {f"{block}.gate.weight": Slot(self.gate)}
        if self.correction_bias is not None:
            out[f"{block}.gate.e_score_correction_bias"] = Slot(self.correction_bias)
        for e in range(first, stop):  # only this rank's experts: the others' tensors are never read
            out[f"{block}.experts.{e}.{names[0]}.weight"] = Slot(self.experts_gate_up, (e - first, slice(0, w)))
            out[f"{block}.experts.{e}.{names[1]}.weight"] = Slot(self.experts_gate_up, (e - first, slice(w, 2 * w)))
            out[f"{block}.experts.{e}.{names[2]}.weight"] = Slot(self.experts_down, (e - first,))
        if self.shared is not None:
            out.update(self.shared.slots(f"{block}.shared_experts"))
        return out


class FFNStack(Layer):
    """The FFN ranks' model: every layer's FFN (this rank's shard when F > 1), serving the attention ranks."""

    def __init__(self, ops, spec: ModelSpec, dtype: torch.dtype, role: Role):
        super().__init__(ops, dtype)
        self.spec, self.role, self.flavor = spec, role, FAMILIES[spec.family]
        split = role.config.ffn_ranks > 1
        self.layers = nn.ModuleList(
            ExpertShardMoE(ops, spec.hidden_size, layer.ffn, dtype) if split and layer.ffn.kind != "dense"
            else build_ffn(ops, spec, layer, dtype) for layer in spec.layers)

    def slots(self) -> dict:
        out = {}
        for i, mlp in enumerate(self.layers):
            out |= ffn_slots(mlp, f"model.layers.{i}", self.flavor)
        return out

    def holds(self, name: str) -> bool:
        """False for another FFN rank's expert (checkpoints naming one tensor per expert)."""
        m = _EXPERT_TENSOR.match(name)
        if m is None or int(m.group(1)) >= len(self.layers):
            return True
        mlp, expert = self.layers[int(m.group(1))], int(m.group(3))
        return not isinstance(mlp, ExpertShardMoE) or mlp.first <= expert < mlp.first + mlp.local

    def prepare_weights(self) -> int:
        return prepare_linear_weights(self, self.ops)

    def cache_layouts(self) -> list:
        return []  # the KV cache lives on the attention ranks

    @torch.inference_mode()
    def serve(self, query_start_loc: list[int]) -> None:
        """The FFN side of one forward: for every layer and micro-batch (the split the attention ranks make),
        receive the hidden states, compute this rank's FFN, and (the leader) send the output back."""
        cfg, p2p = self.role.config, self.role.p2p
        sizes = [query_start_loc[b] - query_start_loc[a]
                 for a, b in micro_batches(query_start_loc, cfg.micro_batches)]
        leader = self.role.rank == cfg.ffn_leader
        asynchronous = hasattr(p2p, "isend")
        to_ffn, from_ffn = self.role.to_ffn, self.role.from_ffn
        in_flight: list = []
        for mlp in self.layers:
            sent, in_flight = in_flight, []
            for n in sizes:
                x = torch.empty(n, self.spec.hidden_size, dtype=self.dtype, device=self.device)
                if to_ffn is not None:
                    to_ffn.broadcast(x, 0)
                else:
                    p2p.recv(x, 0)
                y = mlp(x).contiguous()
                if not leader:
                    continue
                if from_ffn is not None:
                    in_flight.append((from_ffn.ibroadcast(y, from_ffn.world_size - 1), y))
                    continue
                for r in range(cfg.attention_ranks):
                    if asynchronous:
                        in_flight.append((p2p.isend(y, r), y))
                    else:
                        p2p.send(y, r)
            for work, _ in sent:  # the previous layer's sends: long since received
                work.wait()
        for work, _ in in_flight:
            work.wait()


def is_ffn_rank(loaded) -> bool:
    role = getattr(loaded, "afd", None)
    return role is not None and not role.is_attention


def ffn_handlers(loaded) -> dict:
    """An FFN rank's answer to each message rank 0 broadcasts (worker.serve_steps runs the loop): it keeps no
    KV cache, and serves every forward by the step's sequence offsets (host copies: no device read)."""
    return {"cache": lambda *args: None,
            "step": lambda ids, positions, meta, last: loaded.model.serve(meta.query_start_loc_cpu.tolist()),
            "logits": lambda ids: loaded.model.serve([0, len(ids)])}
