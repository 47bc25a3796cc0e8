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

Quantized weights (an opt-in extension of version 1, so no version bump: a backend that does not opt in
computes exactly what it did). A backend whose `quantized_formats` attribute lists a format receives that
format's `modelchip.runtime.quant.QuantizedWeight` (packed bytes as stored, scales, and `compute_dtype`, the
activation dtype) in `prepare_linear`, or in `linear` itself when it has no hook, and its `linear` computes
x @ dequantize(weight).T in x's dtype (W8A8: with x quantized per token first); `runtime/dequant.py` is the
definition, the reference backend its slow implementation. Formats a backend does not list reach it as float
tensors, dequantized once at load by the model and counted in `Ops.fallbacks`.
"""

from __future__ import annotations

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


@dataclass
class AttentionMetadata:
    """Where each sequence's tokens sit in the batch and in the paged cache.

    query_start_loc: [S+1] int64, offsets of each sequence's new tokens in the flattened batch.
    context_lens: [S] int64, tokens in the cache per sequence after this step's tokens were written.
    block_tables: [S, max_blocks] int64, physical block ids per sequence (-1 padding).
    slot_mapping: [T] int64, cache slot (block * block_size + offset) of each new token.
    block_size: tokens per cache block.
    """

    query_start_loc: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    block_size: int

    @property
    def num_seqs(self) -> int:
        return self.context_lens.shape[0]


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

    def write_kv(self, cache: torch.Tensor, values: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Store values [T, ...] into cache [blocks, block_size, ...] at flat slots; in place."""

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor | None,
                        meta: AttentionMetadata, scale: float, v_dim: int | None = None,
                        window: int = 0) -> torch.Tensor:
        """Causal attention of new tokens over each sequence's cached tokens (prefill, chunked prefill and
        decode alike: the new tokens' K/V are already written).

        q [T, h, d_k]; k_cache [blocks, block_size, g, d_k]; v_cache [blocks, block_size, g, d_v], or None
        when values are the first `v_dim` channels of the keys (MLA's latent, MFA-KR). A query at position p
        sees cached positions <= p (and > p - window when window > 0). Returns [T, h, d_v]; softmax in fp32.
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
