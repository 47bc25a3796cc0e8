"""The backend contract: the only ops model code may call, and what each receives and returns.

Version 2 (v1 plus collectives; a v1 backend is accepted and given the default communicator). A backend is an
object with these methods (or a subset: missing ops fall back to the reference backend, and every fallback is
counted). Tensors live on the backend's device; shapes use T = tokens in the batch, H = hidden size,
h = query heads, g = K/V heads, d = head dim, E = experts.

Every op must return the dtype it is given (activations), except where noted: router logits, sampling
probabilities and `logits` are float32.

One optional hook is not an op: `prepare_linear(weight) -> handle`, called once per linear-only weight after
loading (attention and FFN projections, the LM head). The model then passes the handle to `linear` in place of
the tensor, so a backend can keep weights in the layout its matmul streams fastest (oneDNN's blocked format on
CPU, Ascend's FRACTAL_NZ) without a copy per call. A backend with the hook must implement `linear` and accept
both handles and plain tensors there (router and test weights stay plain).

Collectives (v2). Model code split over ranks (tensor parallel) calls `ops.comm.<collective>`, where `ops.comm` is
a `Communicator` (below) over the run's process group. A backend may provide its own with the optional hook
`make_communicator(group) -> Communicator` (a vendor collective library, a device-side implementation);
without it, and for every v1 backend, the default runs torch.distributed collectives on the group the launcher
built (gloo on CPU, the device's own library elsewhere: runtime/distributed/communicator.py). A single-process
run's communicator is the identity. docs/vendor-kit.md, "contract v2: collectives", says what each must do.

Also new in v2, each optional with a default, so a backend written for v1 or early v2 runs unchanged
(docs/vendor-kit.md, "contract v2: cache, metadata, synchronize, capture"): `allocate_kv_cache` (the backend
chooses the KV cache's layout), host-side copies in `AttentionMetadata`, `synchronize()` (calibration closes
every timing with it), `capture_step` (whole-step graph capture for fixed decode batch sizes) and
`fuse_decoder_layers` (the backend runs a stack of standard decoder layers in one call of its own).

Quantized weights (an opt-in extension of version 1, so no version bump: a backend that does not opt in
computes exactly what it did). A backend whose `quantized_formats` attribute lists a format receives that
format's `modelchip.runtime.quant.QuantizedWeight` (packed bytes as stored, scales, and `compute_dtype`, the
activation dtype) in `prepare_linear`, or in `linear` itself when it has no hook, and its `linear` computes
x @ dequantize(weight).T in x's dtype (W8A8: with x quantized per token first); `runtime/dequant.py` is the
definition, the reference backend its slow implementation. Formats a backend does not list reach it as float
tensors, dequantized once at load by the model and counted in `Ops.fallbacks`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

CONTRACT_VERSION = 2
SUPPORTED_CONTRACT_VERSIONS = (1, 2)  # v1: no collectives of its own, so it gets the default communicator

OPS = (
    "embedding",
    "linear",
    "batched_linear",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "write_kv",
    "paged_attention",
    "moe_route",
    "moe_experts",
    "sample",
)

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send", "recv")


@dataclass(frozen=True)
class CacheLayout:
    """One layer's per-token KV cache entry, what `allocate_kv_cache` sizes: K [heads, k_dim], and V [heads, v_dim]
    (`separate_v`) or values read from the first v_dim channels of K (MLA's latent, MFA-KR). For MLA, heads is 1,
    k_dim the latent plus the rotary key (`rope_dim`, its last channels) and v_dim the latent."""

    heads: int
    k_dim: int
    v_dim: int
    separate_v: bool
    rope_dim: int = 0


@dataclass
class AttentionMetadata:
    """Where each sequence's tokens sit in the batch and in the paged cache, on the device and on the host.

    query_start_loc: [S+1] int64, offsets of each sequence's new tokens in the flattened batch.
    context_lens: [S] int64, tokens in the cache per sequence after this step's tokens were written.
    block_tables: [S, max_blocks] int64, physical block ids per sequence (-1 padding).
    slot_mapping: [T] int64, cache slot (block * block_size + offset) of each new token.
    block_size: tokens per cache block.

    Host copies (contract v2; vLLM's `query_start_loc_cpu`, `seq_lens_cpu`, `max_query_len`, `max_seq_len`,
    `num_prefills`/`num_decodes`), built once per step on the host (runtime/batch.py) so a backend learns
    shapes without reading device tensors back (a sync per layer on an asynchronous device):
    query_start_loc_cpu, context_lens_cpu: CPU int64 tensors equal to the two above.
    max_query_len: most new tokens of one sequence; max_context_len: longest context_lens.
    num_decodes: sequences with one new token, num_prefills: the others (prompts and prompt chunks).
    Left out, they are computed from the device tensors once, when the metadata is made.
    """

    query_start_loc: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    block_size: int
    query_start_loc_cpu: torch.Tensor | None = None
    context_lens_cpu: torch.Tensor | None = None
    max_query_len: int = -1
    max_context_len: int = -1
    num_prefills: int = -1
    num_decodes: int = -1

    def __post_init__(self) -> None:
        if self.query_start_loc_cpu is None:
            self.query_start_loc_cpu = self.query_start_loc.cpu()
        if self.context_lens_cpu is None:
            self.context_lens_cpu = self.context_lens.cpu()
        if self.max_query_len < 0 or self.num_decodes < 0:
            counts = self.query_start_loc_cpu.diff()
            self.max_query_len = int(counts.max()) if counts.numel() else 0
            self.num_decodes = int((counts == 1).sum())
            self.num_prefills = counts.numel() - self.num_decodes
        if self.max_context_len < 0:
            self.max_context_len = int(self.context_lens_cpu.max()) if self.context_lens_cpu.numel() else 0

    @property
    def num_seqs(self) -> int:
        return self.context_lens.shape[0]

    @property
    def is_decode(self) -> bool:
        """Every sequence has exactly one new token (a pure decode step)."""
        return self.num_prefills == 0

    def to(self, device: torch.device) -> AttentionMetadata:
        """The device tensors on `device`; the host copies stay on the host."""
        return dataclasses.replace(self, query_start_loc=self.query_start_loc.to(device),
                                   context_lens=self.context_lens.to(device),
                                   block_tables=self.block_tables.to(device),
                                   slot_mapping=self.slot_mapping.to(device))


@dataclass(frozen=True)
class DecoderLayerWeights:
    """One standard decoder layer as `fuse_decoder_layers` receives it: GQA attention (stacked q/k/v, optional
    per-head q/k RMSNorm, half-split rotary, sliding `window` when > 0) and a gated (SwiGLU) MLP with stacked
    gate/up, each block behind an RMSNorm and added back to the residual. Linear weights are what the backend's
    `prepare_linear` returned (or the plain tensors, for a backend without it); norms are [H] or [d] tensors.

    The layer computes, on h [T, H], exactly these ops in this order (runtime/models/decoder.py):
      x = rms_norm(h, input_norm, eps); q, k, v = split(linear(x, qkv, qkv_bias)) viewed [T, heads, d]
      (q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps) when given); q, k = rotary(q), rotary(k)
      write_kv(k_cache, k), write_kv(v_cache, v); o = paged_attention(q, k_cache, v_cache, meta, scale, window)
      h = h + linear(o, o_proj, o_bias)
      h = h + linear(silu_and_mul(linear(rms_norm(h, post_norm, eps), gate_up, gate_up_bias)), down, down_bias)
    """

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    eps: float
    qkv: object
    qkv_bias: torch.Tensor | None
    o_proj: object
    o_bias: torch.Tensor | None
    gate_up: object
    gate_up_bias: torch.Tensor | None
    down: object
    down_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    window: int


# what a fused stack is called with: (h [T, H], cos, sin [T, d/2] float32, meta, per-layer (K, V) caches) -> h
# after the last layer, or None to run this step's layers op by op (inputs it does not take, e.g. a KV cache dtype)
FusedLayers = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata,
                        list[tuple[torch.Tensor, torch.Tensor | None]]], torch.Tensor | None]


class Communicator(Protocol):
    """Collectives over the ranks of one group (ranks 0..world_size-1 within it). Tensors live on the
    backend's device; every rank calls a collective with tensors of the same shape and dtype, in the same
    order. Sum is the only reduction the model needs."""

    rank: int
    world_size: int

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of x over ranks, returned on every rank (may reuse x's storage)."""

    def all_gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every rank's x concatenated along `dim` in rank order, on every rank."""

    def reduce_scatter(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Sum over ranks, then this rank's 1/world_size chunk along `dim`."""

    def all_to_all(self, x: torch.Tensor, output_split_sizes: list[int] | None = None,
                   input_split_sizes: list[int] | None = None) -> torch.Tensor:
        """Rows of x split by input_split_sizes (default: equal) sent to ranks 0..N-1; the rows received,
        sized by output_split_sizes, concatenated in rank order (MoE dispatch and combine)."""

    def send(self, x: torch.Tensor, dst: int) -> None:
        """Blocking send of x to rank dst."""

    def recv(self, x: torch.Tensor, src: int) -> torch.Tensor:
        """Blocking receive from rank src into x (shape and dtype agreed beforehand); returns x."""


class Backend(Protocol):
    name: str
    device: torch.device
    quantized_formats: frozenset[str]  # optional: QuantizedWeight formats prepare_linear/linear take packed

    def embedding(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """ids [T] int64 -> [T, H] rows of weight [V, H]."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, in] @ weight[out, in].T (+ bias) -> [T, out]. `weight` may be a `prepare_linear` handle."""

    def prepare_linear(self, weight: torch.Tensor) -> object:
        """Optional hook (not an op, no fallback): weight [out, in] (a tensor, or a QuantizedWeight of a format
        in `quantized_formats`) -> whatever this backend's `linear` reads fastest. Called once per weight at
        load; the model may drop the weight afterwards."""

    def batched_linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Per-head projection: x [T, h, in], weight [h, out, in] -> [T, h, out] (MLA's absorbed up-projections)."""

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x / sqrt(mean(x^2) + eps) over the last dim in float32, cast to x.dtype, then times weight (the
        order Llama-family checkpoints were trained with)."""

    def rotary_embedding(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         interleaved: bool = False) -> torch.Tensor:
        """Rotate x [T, heads, d_rot] by cos/sin [T, d_rot/2]. Half-split pairs (i, i+d/2) by default;
        interleaved pairs (2i, 2i+1) when `interleaved`."""

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """[T, 2I] -> silu(gate) * up, [T, I] (gate is the first half)."""

    def allocate_kv_cache(self, layout: CacheLayout, num_blocks: int, block_size: int,
                          dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Optional hook (v2, not an op): one layer's (K cache, V cache or None when not layout.separate_v),
        zeroed, in this backend's own layout; `write_kv` and `paged_attention` then receive exactly these
        tensors. Called when the engine makes its cache (every rank its own), before any step. Default (the
        reference's): K [num_blocks, block_size, heads, k_dim], V [num_blocks, block_size, heads, v_dim]. A
        backend that allocates must implement `write_kv` and `paged_attention` (the reference cannot read
        another layout)."""

    def synchronize(self) -> None:
        """Optional hook (v2): return once all work queued on this backend's device has finished (a CUDA
        backend calls its device's synchronize). Calibration calls it before reading the clock around every
        timed region. Default: the reference's, which waits on torch's module for the device type where it has
        one, and does nothing on CPU (CPU ops finish before they return)."""

    def capture_step(self, step: Callable[[], torch.Tensor], batch_size: int) -> Callable[[], torch.Tensor] | None:
        """Optional hook (v2): whole-step capture (CUDA graphs, ACL graphs). `step()` runs one decode step of
        `batch_size` sequences, reading inputs the engine rewrites in place before each call (fixed tensors,
        fixed shapes) and returning the logits; the backend may run it to warm up and record it, and returns a
        callable that replays it (same outputs as `step()` on the inputs present at replay), or None to leave
        the step uncaptured. Called once per padded batch size the engine meets. Host-side metadata
        (AttentionMetadata.max_context_len and the rest) is refreshed before every replay, but a recorded graph
        sees the values of its capture: a capturing backend's attention must not size work by them. Default:
        None (the CPU backends capture nothing)."""

    def fuse_decoder_layers(self, layers: list[DecoderLayerWeights]) -> FusedLayers | None:
        """Optional hook (v2): run a stack of standard decoder layers (`DecoderLayerWeights`: GQA + gated MLP, one
        process) in one call of the backend's own, where a model's per-op calls cost more than their work (a
        small model's decode step on a CPU, llama.cpp's single graph). Called once after `prepare_linear`, when
        every layer of a model is such a layer; returns a callable (h, cos, sin, meta, caches) -> h after the
        last layer, which must compute what the layers' ops would (the kit checks it against them), or None to
        leave the layers to the ops one by one. Default: None."""

    def write_kv(self, cache: torch.Tensor, values: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Store values [T, g, d] into the cache at flat slots (block * block_size + offset); in place. `cache`
        is a tensor this backend's `allocate_kv_cache` returned (default [blocks, block_size, g, d])."""

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor | None,
                        meta: AttentionMetadata, scale: float, v_dim: int | None = None,
                        window: int = 0) -> torch.Tensor:
        """Causal attention of new tokens over each sequence's cached tokens (prefill, chunked prefill and
        decode alike: the new tokens' K/V are already written).

        q [T, h, d_k]; k_cache, v_cache: what `allocate_kv_cache` returned (default [blocks, block_size, g,
        d_k] and [blocks, block_size, g, d_v]); v_cache None when values are the first `v_dim` channels of the
        keys (MLA's latent, MFA-KR). A query at position p sees cached positions <= p (and > p - window when
        window > 0). Returns [T, h, d_v]; softmax in fp32. Shapes and lengths come from meta's host copies:
        reading its device tensors back (.item(), .tolist()) would stall an asynchronous device every layer.
        """

    def moe_route(self, router_logits: torch.Tensor, top_k: int, scoring: str, norm_topk_prob: bool,
                  n_group: int = 1, topk_group: int = 1, correction_bias: torch.Tensor | None = None,
                  scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """router_logits [T, E] float32 -> (weights [T, top_k] float32, expert ids [T, top_k] int64).
        scoring 'softmax' or 'sigmoid'; with groups, experts are chosen only from the `topk_group` best
        groups (a group's score: its best expert, or the sum of its best two when a correction bias is
        given); the bias shifts selection only, never the weights."""

    def moe_experts(self, x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
                    ids: torch.Tensor) -> torch.Tensor:
        """x [T, H]; gate_up [E, 2I, H]; down [E, H, I]; weights/ids [T, top_k] -> [T, H]:
        sum_k weights[t,k] * down[e] @ (silu(gate[e] x) * up[e] x), e = ids[t,k]."""

    def sample(self, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
               top_k: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """logits [S, V] float32, per-row temperature/top_p (float32) and top_k (int64; 0 = off) -> [S] ids.
        temperature 0 means greedy (argmax)."""
