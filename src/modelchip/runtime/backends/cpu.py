"""The CPU backend: the reference backend's ops, with linear weights laid out once for a fast matmul.

A matmul over weights kept [out, in] (nn.Linear's layout) streams them well under memory bandwidth on x86.
float32 weights go, on AVX-512 and AVX2 CPUs, to blocks of 16 outputs for the kernels' own matmul
(cpu_linear_f32.cpp: one FMA per weight line, no per-call setup; faster than oneDNN's packed float32 at one row with
AVX-512, and 1.1-1.6x at 1-256 rows on an AVX2-only Zen 3; BENCHMARKS.md), elsewhere to oneDNN's
blocked layout, as bfloat16 ones on CPUs without AVX512-BF16 (1.4-1.6x faster than plain
at every row count on a Zen 4 EPYC; BENCHMARKS.md); MODELCHIP_F32_MATMUL=blocks or =onednn overrides the
float32 choice. On AVX512-BF16 CPUs, bfloat16 weights go to pair blocks for the fused kernels' own matmul
(cpu_linear_bf16.cpp): at one row it reads weights near memory bandwidth without oneDNN's ~10 us per call, and
on a Zen 4 it matches oneDNN from there up to prefill sizes. On CPUs with AMX the same pair blocks run through
AMX tiles (the layout is the tiles' own): on an AMX Xeon 1.5x oneDNN's AMX matmul at 1-16 rows, 1.24-1.44x at
32-128, level at 256-512 (BENCHMARKS.md), and a row's result never depends on its batch, which
oneDNN's does not promise. MODELCHIP_BF16_MATMUL=pairs or =onednn overrides the choice, MODELCHIP_BF16_AMX=0
keeps the pairs on vdpbf16ps (`benchmarks/bench_linear.py` measures all three). Either way the weight is kept
once.
Quantized weights (`QuantizedWeight`): GGUF Q8_0, Q4_0 and Q4_1 stay packed for the kernels' int8 matmul
(cpu_linear_quant.cpp); other formats are dequantized once and take the dense path, counted (cpu_quant.py).

At decode sizes a step is per-op dispatch as much as matmuls, so RMSNorm, rotary, SiLU-and-mul, cache writes
and attention run as fused C++ kernels (cpu_kernels.cpp, built once per machine) that keep the reference's
roundings; attention reads the paged cache in place, with no gathered copy or mask, and treats every query
token, prefill or decode, as a decode over its own context, so a token's result never depends on its batch.
Where the kernels cannot be built these ops run in eager PyTorch (decode attention through the fused
scaled-dot-product attention over blocks gathered once per step, prefill per sequence; bfloat16 matmuls
through oneDNN), and `fallbacks` says why; that path is not batch-invariant. Every other op is the
reference's. A model made of standard layers (GQA + gated MLP: Llama, Qwen2/3, Mistral, SmolLM2) runs its
whole decoder stack in one call (`fuse_decoder_layers`, cpu_decoder_layers.cpp): the same kernels in the same
order, so the same bits, without the interpreter between ~16 op calls a layer (BENCHMARKS.md).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from modelchip.errors import ModelchipError
from modelchip.runtime.backends import cpu_kernels, cpu_quant
from modelchip.runtime.backends.cpu_quant import QuantLinear, prepare_quantized, scaled_output
from modelchip.runtime.backends.reference import ReferenceBackend, decode_blocks, gather_blocks, visible
from modelchip.runtime.contract import AttentionMetadata, DecoderLayerWeights, FusedLayers
from modelchip.runtime.dequant import quantize_activation_int8
from modelchip.runtime.quant import FORMATS, QuantizedWeight

_LINEAR = torch.ops.mkldnn._linear_pointwise.default  # resolved once: the overload lookup costs per call


@dataclass(frozen=True)
class PackedLinear:
    """What `prepare_linear` returns; the model drops its plain tensor. `layout` is "onednn" (an opaque oneDNN
    tensor), "bf16-pairs" (cpu_linear_bf16.cpp's blocks, padded) or "f32-blocks" (cpu_linear_f32.cpp's); each
    has the weight's dtype."""

    packed: torch.Tensor
    layout: str
    out_features: int
    row_scales: torch.Tensor | None = None  # W8A8: integers packed; activations quantized per call (cpu_quant)
    kernel: Callable | None = None  # the kernels' matmul for this layout, called straight for 2-D inputs


def bf16_matmul(kernels) -> str:
    """Which matmul bfloat16 weights get: "bf16-pairs" (the kernels' own, where the CPU has AVX512-BF16; through
    AMX tiles where it also has AMX) or "onednn". MODELCHIP_BF16_MATMUL=pairs|onednn decides instead (how a
    machine measures both through the whole model)."""
    has_pairs = bool(getattr(kernels, "has_linear_bf16", False))
    forced = os.environ.get("MODELCHIP_BF16_MATMUL", "")
    if forced == "onednn":
        return "onednn"
    if forced == "pairs":
        if not has_pairs:
            raise ModelchipError("MODELCHIP_BF16_MATMUL=pairs, but the pair-blocked matmul cannot run here "
                                 "(no AVX512-BF16, or the kernels are not built)")
        return "bf16-pairs"
    if forced:
        raise ModelchipError(f"MODELCHIP_BF16_MATMUL={forced!r}: choose pairs or onednn, or leave it unset")
    return "bf16-pairs" if has_pairs else "onednn"


def bf16_amx(kernels) -> bool:
    """Whether the pair-blocked matmul runs through AMX tiles: where the CPU and OS give them, unless
    MODELCHIP_BF16_AMX=0 keeps it on vdpbf16ps. Sets the kernels' (process-wide) choice and returns it."""
    has_amx = bool(getattr(kernels, "has_linear_bf16_amx", False))
    setting = os.environ.get("MODELCHIP_BF16_AMX", "")
    if setting not in ("", "0", "1"):
        raise ModelchipError(f"MODELCHIP_BF16_AMX={setting!r}: set 0 (vdpbf16ps) or 1 (AMX tiles), or leave it unset")
    if setting == "1" and not has_amx:
        raise ModelchipError("MODELCHIP_BF16_AMX=1, but this CPU (or its OS, or the kernels' build) gives no AMX tiles")
    if has_amx:
        kernels.set_linear_bf16_amx(setting != "0")
    return has_amx and setting != "0"


def f32_matmul(kernels) -> str:
    """Which matmul float32 weights get: "f32-blocks" (the kernels' own, cpu_linear_f32.cpp) where its AVX-512 or
    AVX2 copy runs (both measured against oneDNN, BENCHMARKS.md), else "onednn" (the plain C++ copy was never
    faster). MODELCHIP_F32_MATMUL=blocks|onednn decides instead (blocks: the widest copy this CPU has)."""
    has_blocks = kernels is not None and hasattr(kernels, "linear_f32")
    forced = os.environ.get("MODELCHIP_F32_MATMUL", "")
    if forced == "onednn":
        return "onednn"
    if forced == "blocks":
        if not has_blocks:
            raise ModelchipError("MODELCHIP_F32_MATMUL=blocks, but the kernels are not built here")
        return "f32-blocks"
    if forced:
        raise ModelchipError(f"MODELCHIP_F32_MATMUL={forced!r}: choose blocks or onednn, or leave it unset")
    return "f32-blocks" if has_blocks and kernels.best_f32_isa in ("avx512", "avx2") else "onednn"


def _why_not_fused(kernels, missing: str, layers: list[DecoderLayerWeights]) -> str:
    """Why these layers cannot run as one stack of the kernels' ("" when they can)."""
    if os.environ.get("MODELCHIP_FUSED_LAYERS", "1") == "0":
        return "MODELCHIP_FUSED_LAYERS=0"
    if kernels is None or not hasattr(kernels, "DecoderLayers"):
        return missing or "the kernels have no decoder stack"
    if not layers:
        return "no layers"
    dtype = layers[0].input_norm.dtype
    for i, w in enumerate(layers):
        for name in ("qkv", "o_proj", "gate_up", "down"):
            handle = getattr(w, name)
            if isinstance(handle, QuantLinear):
                if dtype not in cpu_quant.KERNEL_ACTIVATIONS:
                    return f"layer {i} {name}: {handle.format} weight on {dtype} activations"
            elif not (type(handle) is PackedLinear and handle.kernel is not None and handle.row_scales is None
                      and handle.packed.dtype == dtype):
                layout = handle.layout if isinstance(handle, PackedLinear) else type(handle).__name__
                return f"layer {i} {name}: a {layout} weight, which the fused kernels' matmuls do not read"
    return ""


def _fused_linear(kernels, handle, bias: torch.Tensor | None):
    if isinstance(handle, QuantLinear):
        return kernels.fused_linear(handle.format, handle.packed, handle.out_features, bias)
    return kernels.fused_linear(handle.layout, handle.packed, handle.out_features, bias)


class CPUBackend(ReferenceBackend):
    name = "cpu"
    quantized_formats = frozenset(FORMATS)  # each prepared by its function in cpu_quant.PREPARE

    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__(device)
        if self.device.type != "cpu":
            raise ModelchipError(f"the cpu backend runs on device 'cpu', not {str(self.device)!r}")
        if not torch.backends.mkldnn.is_available():
            raise ModelchipError("this torch build has no oneDNN (mkldnn); use --backend reference")
        self.pack_dtypes = {torch.float32}
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            self.pack_dtypes.add(torch.bfloat16)
        self.fallbacks: Counter[str] = Counter()  # weights left unpacked, eager ops, by reason (conformance shows it)
        self.kernels, self.kernels_missing = cpu_kernels.load()
        self.bf16_linear = bf16_matmul(self.kernels)
        self.bf16_amx = self.bf16_linear == "bf16-pairs" and bf16_amx(self.kernels)
        self.f32_linear = f32_matmul(self.kernels)
        cpu_quant.choose_isa(self.kernels)
        # per-step tables, rebuilt when a new step's tensors arrive (every layer of a step shares them)
        self._rope: tuple = (None, None, None)
        self._plan: tuple = (None, {}, None, 0)
        self._per_query: tuple = (None, None, None)
        self.unfused = "no model prepared"  # why the last model's layers run op by op ("" when fused)

    def prepare_linear(self, weight: torch.Tensor | QuantizedWeight) -> torch.Tensor | PackedLinear:
        if isinstance(weight, QuantizedWeight):
            # only W8A8 needs the dense packing itself (its handle carries the row scales); the kernels' int8
            # matmul reads bfloat16 on any x86, and a weight dequantized once is kept plain where oneDNN has no
            # bfloat16 (CPUs without AVX512-BF16): both beat unpacking it in every call
            w8a8 = weight.format == "int8_channel" and weight.activation is not None
            if w8a8 and weight.compute_dtype not in self.pack_dtypes:  # the reference's per call
                self._count(f"linear: {weight.format} weight in {weight.compute_dtype} left to the reference")
                return weight
            return prepare_quantized(weight, self.prepare_linear, self._count, self.kernels)
        if weight.dim() != 2 or weight.dtype not in self.pack_dtypes:
            self.fallbacks[f"linear weight left unpacked ({weight.dtype}, {weight.dim()}-D)"] += 1
            return weight
        out = weight.shape[0]
        if weight.dtype == torch.bfloat16 and self.kernels is None:  # the pair-blocked matmul is not built
            self.fallbacks[f"bfloat16 linear weight on oneDNN ({self.kernels_missing})"] += 1
        if weight.dtype == torch.bfloat16 and self.bf16_linear == "bf16-pairs":
            return PackedLinear(self.kernels.pack_linear_bf16(weight), "bf16-pairs", out,
                                kernel=self.kernels.linear_bf16)
        if weight.dtype == torch.float32 and self.f32_linear == "f32-blocks" and self.kernels is not None:
            return PackedLinear(self.kernels.pack_linear_f32(weight), "f32-blocks", out,
                                kernel=self.kernels.linear_f32)
        return PackedLinear(torch.ops.mkldnn._reorder_linear_weight(weight.contiguous()), "onednn", out)

    def _linear_quantized(self, x: torch.Tensor, weight: QuantLinear, bias: torch.Tensor | None) -> torch.Tensor:
        if x.dtype in cpu_quant.KERNEL_ACTIVATIONS:
            return cpu_quant.linear_packed(self.kernels, x, weight, bias)
        self.fallbacks[f"{weight.format} linear on {x.dtype} activations, through float32"] += 1
        return cpu_quant.linear_packed(self.kernels, x.float(), weight, bias).to(x.dtype)

    def linear(self, x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
        # the model's case first, with the fewest checks (~121 calls a decode step)
        if (type(weight) is PackedLinear and weight.kernel is not None and weight.row_scales is None
                and x.dim() == 2 and x.dtype == weight.packed.dtype):
            return weight.kernel(x, weight.packed, weight.out_features, bias)
        if isinstance(weight, QuantLinear):
            if x.dim() == 2 and x.dtype in cpu_quant.KERNEL_ACTIVATIONS:  # the model's case, straight to the kernel
                return self.kernels.linear_quant(x, weight.packed, weight.format, weight.out_features, bias)
            return self._linear_quantized(x, weight, bias)
        if not isinstance(weight, PackedLinear):
            return super().linear(x, weight, bias) if isinstance(weight, QuantizedWeight) else \
                F.linear(x, weight, bias)
        if x.dtype != weight.packed.dtype:
            raise ModelchipError(f"cpu backend: linear input is {x.dtype} but its weight was packed as "
                                 f"{weight.packed.dtype}")
        rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])  # 2-D is the model's case: no reshapes
        if weight.row_scales is not None:
            q, x_scale = quantize_activation_int8(rows)
            out = scaled_output(self.linear(q.to(x.dtype), replace(weight, row_scales=None)), x_scale,
                                weight.row_scales, bias, x.dtype)
            return out if x.dim() == 2 else out.view(*x.shape[:-1], weight.out_features)
        if weight.kernel is not None:  # bf16-pairs, f32-blocks
            out = weight.kernel(rows, weight.packed, weight.out_features, bias)
        else:
            out = _LINEAR(rows if rows.is_contiguous() else rows.contiguous(), weight.packed, bias, "none", [], "")
        return out if x.dim() == 2 else out.view(*x.shape[:-1], weight.out_features)

    def fuse_decoder_layers(self, layers: list[DecoderLayerWeights]) -> FusedLayers | None:
        """The layers as one C++ stack (cpu_decoder_layers.cpp: the same kernels, in the same order, without the
        interpreter between them; ~16 op calls a layer at batch 1) when the kernels are built and every linear
        weight is on one of their matmuls; else None and `unfused` says why. MODELCHIP_FUSED_LAYERS=0 turns it
        off (to measure what it saves, or check it against the ops one by one)."""
        self.unfused = _why_not_fused(self.kernels, self.kernels_missing, layers)
        if self.unfused:
            return None
        k = self.kernels
        stack = k.DecoderLayers(layers[0].input_norm.numel())
        for w in layers:
            linears = [_fused_linear(k, handle, bias) for handle, bias in
                       ((w.qkv, w.qkv_bias), (w.o_proj, w.o_bias), (w.gate_up, w.gate_up_bias), (w.down, w.down_bias))]
            stack.add_layer(w.input_norm, w.post_norm, w.eps, *linears, w.q_norm, w.k_norm, w.num_heads,
                            w.num_kv_heads, w.head_dim, w.scale, w.window)
        dtype = layers[0].input_norm.dtype

        def run(h, cos, sin, meta, caches):
            if h.dtype != dtype or caches[0][0].dtype != dtype:  # e.g. a KV cache in another dtype: op by op
                self._count(f"decoder stack op by op: {h.dtype} activations and a {caches[0][0].dtype} KV cache, "
                            f"the stack was built for {dtype}")
                return None
            tables, lens = self._queries(meta, h.shape[0])
            return stack.forward(h, cos, sin, [c[0] for c in caches], [c[1] for c in caches], meta.slot_mapping,
                                 tables, lens)

        return run

    def _count(self, reason: str) -> None:
        self.fallbacks[reason] += 1

    def _eager(self) -> bool:
        """True (and counted) when a fused kernel is unavailable and the op runs in eager PyTorch."""
        if self.kernels is None:
            self.fallbacks[self.kernels_missing] += 1
            return True
        return False

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if self._eager():
            return super().rms_norm(x, weight, eps)
        return self.kernels.rms_norm(x, weight, eps)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self._eager():
            return super().silu_and_mul(gate_up)
        return self.kernels.silu_and_mul(gate_up)

    def write_kv(self, cache: torch.Tensor, values: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        if self._eager() or values.dtype != cache.dtype:
            return super().write_kv(cache, values, slot_mapping)
        self.kernels.write_kv(cache, values, slot_mapping)

    def rotary_embedding(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         interleaved: bool = False) -> torch.Tensor:
        if interleaved:
            return super().rotary_embedding(x, cos, sin, interleaved)
        if not self._eager():
            return self.kernels.rotary(x, cos, sin)
        # x1 cos - x2 sin | x2 cos + x1 sin  as  x * [cos, cos] + [x2, x1] * [-sin, sin]: same roundings, half
        # the ops, and the widened tables are built once per step and dtype
        if self._rope[0] is not cos or self._rope[1] != x.dtype:
            wide = (torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1))
            self._rope = (cos, x.dtype, tuple(t[:, None, :].to(x.dtype) for t in wide))
        cos2, sin2 = self._rope[2]
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos2 + torch.cat((x2, x1), dim=-1) * sin2

    def sample(self, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
               top_k: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if bool((temperature <= 0).all()):  # greedy: max's first-maximum index is argmax, 2-3x faster on CPU
            return logits.float().max(dim=-1).indices
        return super().sample(logits, temperature, top_p, top_k, generator)

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor | None,
                        meta: AttentionMetadata, scale: float, v_dim: int | None = None,
                        window: int = 0) -> torch.Tensor:
        heads, groups = q.shape[1], k_cache.shape[2]
        if not self._eager():  # every query, prefill or decode, read from the paged cache in place
            tables, lens = self._queries(meta, q.shape[0])
            return self.kernels.decode_attention(q, k_cache, v_cache, v_dim or 0, tables, lens, scale, window)
        if meta.is_decode:  # decode: one query per sequence, all sequences in one call
            tables, length, mask = self._decode_plan(meta, window, q.dtype)
            k, v = gather_blocks(k_cache, v_cache, tables, length, v_dim)  # [S, L, g, d]
            s = meta.num_seqs
            # a K/V group's queries become the rows of one attention problem: no K/V repeated per head
            qg = q.view(s, groups, heads // groups, q.shape[-1])
            out = F.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                                 scale=scale)
            return out.reshape(s, heads, v.shape[-1])
        out = []
        starts = meta.query_start_loc_cpu.tolist()  # host copies: no read-back of the device tensors
        for s, ctx in enumerate(meta.context_lens_cpu.tolist()):
            n = starts[s + 1] - starts[s]
            blocks = meta.block_tables[s, : -(-ctx // meta.block_size)]
            k = k_cache.index_select(0, blocks).flatten(0, 1)[:ctx]  # [ctx, g, dk]
            v = k[..., :v_dim] if v_cache is None else v_cache.index_select(0, blocks).flatten(0, 1)[:ctx]
            mask = visible(torch.arange(ctx - n + 1, ctx + 1)[:, None], ctx, window)  # [n, ctx]
            o = F.scaled_dot_product_attention(q[starts[s]:starts[s + 1]].transpose(0, 1), k.transpose(0, 1),
                                               v.transpose(0, 1), attn_mask=mask, scale=scale, enable_gqa=True)
            out.append(o.transpose(0, 1))  # [n, h, dv]
        return torch.cat(out, dim=0)

    def _queries(self, meta: AttentionMetadata, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query token as a decode of its own: its sequence's block table row and its own context length
        (the tokens up to and including itself), built once per step. The kernel's arithmetic for a query then
        depends on that query and its context alone, so its result is the same bits whether it runs alone, in
        any batch, next to prefills or in any prefill chunk: greedy output is batch-invariant. (Prefill through
        scaled-dot-product attention, as before, gave prompt tokens other roundings than decode, and decodes
        sharing a step with a prefill took that path too.)"""
        if self._per_query[0] is not meta:
            if meta.is_decode:  # already one query per sequence
                self._per_query = (meta, meta.block_tables, meta.context_lens)
            else:  # from the host copies (a repeat_interleave over device counts reads them back)
                starts, ctx = meta.query_start_loc_cpu, meta.context_lens_cpu
                seq = torch.repeat_interleave(torch.arange(meta.num_seqs), starts.diff(), output_size=tokens)
                lens = ctx.index_select(0, seq) - (starts[1:].index_select(0, seq) - 1 - torch.arange(tokens))
                seq = seq.to(meta.block_tables.device)
                self._per_query = (meta, meta.block_tables.index_select(0, seq), lens.to(meta.context_lens.device))
        return self._per_query[1], self._per_query[2]

    def _decode_plan(self, meta: AttentionMetadata, window: int,
                     dtype: torch.dtype) -> tuple[torch.Tensor, int, torch.Tensor]:
        """(`decode_blocks`' block ids and longest context L; [S, 1, 1, L] additive mask, 0 or -inf), built
        once per step, window and dtype: every layer of a step reads the same blocks. (An additive mask
        spares SDPA converting a boolean one on every call.)"""
        if self._plan[0] is not meta:
            self._plan = (meta, {}, *decode_blocks(meta))
        _, masks, tables, longest = self._plan
        if (window, dtype) not in masks:
            seen = visible(meta.context_lens[:, None], longest, window)[:, None, None, :]
            masks[window, dtype] = torch.zeros(seen.shape, dtype=dtype).masked_fill_(~seen, float("-inf"))
        return tables, longest, masks[window, dtype]
