"""Backends with one deliberately wrong op each, the kind of mistake a real kernel port makes."""

import torch
import torch.nn.functional as F

from modelchip.runtime.backends.reference import ReferenceBackend


class _OneOp:
    contract_version = 1

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.ref = ReferenceBackend(device)


class WrongEpsNorm(_OneOp):
    name = "wrong-eps"

    def rms_norm(self, x, weight, eps):
        return self.ref.rms_norm(x, weight, 1e-2)  # a hard-coded epsilon instead of the model's


class UnscaledAttention(_OneOp):
    name = "no-scale"

    def paged_attention(self, q, k_cache, v_cache, meta, scale, v_dim=None, window=0):
        return self.ref.paged_attention(q, k_cache, v_cache, meta, 1.0, v_dim, window)  # forgot 1/sqrt(d)


class Bf16Linear(_OneOp):
    name = "bf16-linear"

    def linear(self, x, weight, bias=None):
        # "fast path": everything in bf16, and the result left in bf16 even for fp32 router logits
        return F.linear(x.bfloat16(), weight.bfloat16(), None if bias is None else bias.bfloat16())


class Bf16Router(_OneOp):
    name = "bf16-router"

    def moe_route(self, *args, **kwargs):
        weights, ids = self.ref.moe_route(*args, **kwargs)
        return weights.bfloat16(), ids  # the contract says float32 routing weights


class InterleavedRotary(_OneOp):
    name = "interleaved-rotary"

    def rotary_embedding(self, x, cos, sin, interleaved=False):
        return self.ref.rotary_embedding(x, cos, sin, interleaved=True)  # GPT-J pairs where Llama wants halves


class SwappedSiluAndMul(_OneOp):
    name = "swapped-silu"

    def silu_and_mul(self, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(up) * gate  # gate and up read in the wrong order


class StaleDecodeAttention(_OneOp):
    """A decode-only bug the op grid happens to miss (each of its decode batches is a single sequence or has
    one within its first five tokens): in batches of two or more sequences all past their fifth token it
    leaves out the token written this step. Only the model runs, with real multi-step decoding, catch it."""

    name = "stale-decode"

    def paged_attention(self, q, k_cache, v_cache, meta, scale, v_dim=None, window=0):
        if q.shape[0] == meta.num_seqs > 1 and bool((meta.context_lens > 5).all()):
            meta = type(meta)(meta.query_start_loc, meta.context_lens - 1, meta.block_tables, meta.slot_mapping,
                              meta.block_size)
        return self.ref.paged_attention(q, k_cache, v_cache, meta, scale, v_dim, window)


class OtherTieBreakRouter(_OneOp):
    """Correct, but breaks exact ties between experts the other way (highest id first): must pass."""

    name = "other-ties"

    def moe_route(self, router_logits, top_k, scoring, norm_topk_prob, n_group=1, topk_group=1,
                  correction_bias=None, scaling=1.0):
        if n_group == 1:  # the correction bias moves selection only, never the weights
            nudge = torch.arange(router_logits.shape[1], device=router_logits.device) * 1e-6
            correction_bias = nudge if correction_bias is None else correction_bias + nudge
        return self.ref.moe_route(router_logits, top_k, scoring, norm_topk_prob, n_group, topk_group,
                                  correction_bias, scaling)


class StalePackedLinear(_OneOp):
    """Prepares weights by rounding them to bfloat16 once, "to save memory", and is exact on plain tensors:
    only the cases that go through prepare_linear, as every model weight does, can catch it."""

    name = "stale-pack"

    def prepare_linear(self, weight):
        return {"packed": weight.bfloat16()}

    def linear(self, x, weight, bias=None):
        if isinstance(weight, dict):
            weight = weight["packed"].to(x.dtype)
        return F.linear(x, weight, bias)
