"""Backends with one deliberately wrong op each, the kind of mistake a real kernel port makes."""

import torch
import torch.nn.functional as F

from modelchip.runtime.backends.reference import ReferenceBackend
from modelchip.runtime.distributed.communicator import TorchCommunicator
from modelchip.runtime.quant import QuantizedWeight


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


class _QuantizedOneOp(_OneOp):
    """Takes `quantized_formats` packed, decodes them with one mistake (`dense`), and is exact otherwise."""

    quantized_formats = frozenset()

    def linear(self, x, weight, bias=None):
        if isinstance(weight, QuantizedWeight):
            weight = self.dense(weight).to(x.dtype)
        return F.linear(x, weight, bias)


class Q8ScaleAsBf16(_QuantizedOneOp):
    """Reads Q8_0's fp16 block scale as bfloat16 (both are two bytes): a wrong scale."""

    name = "q8-bf16-scale"
    quantized_formats = frozenset({"q8_0"})

    def dense(self, w):
        b = w.data.reshape(-1, 34)
        d = b[:, :2].contiguous().view(torch.bfloat16).float()
        return (d * b[:, 2:].contiguous().view(torch.int8).float()).reshape(w.shape)


class InterleavedNibbles(_QuantizedOneOp):
    """Unpacks Q4_0/Q4_1 nibbles as neighbours (low, high of byte i = weights 2i, 2i+1) where ggml puts the
    low nibbles first and the high nibbles after them: a wrong block layout."""

    name = "interleaved-nibbles"
    quantized_formats = frozenset({"q4_0", "q4_1"})

    def dense(self, w):
        nbytes = 18 if w.format == "q4_0" else 20
        b = w.data.reshape(-1, nbytes)
        qs = b[:, nbytes - 16:]
        q = torch.stack((qs & 0x0F, qs >> 4), dim=-1).reshape(-1, 32).float()
        d = b[:, :2].contiguous().view(torch.float16).float()
        if w.format == "q4_0":
            return (d * (q - 8)).reshape(w.shape)
        return (d * q + b[:, 2:4].contiguous().view(torch.float16).float()).reshape(w.shape)


class FP8RowBlockScale(_QuantizedOneOp):
    """Applies each row block's first FP8 scale across the whole row (as if blocks were per output channel)."""

    name = "fp8-row-scale"
    quantized_formats = frozenset({"fp8_block"})

    def dense(self, w):
        bo = w.block_shape[0]
        return w.data.float() * w.scales[:, :1].repeat_interleave(bo, dim=0)[: w.out_features]


class Q6KUnsignedScales(_QuantizedOneOp):
    """Reads Q6_K's sub-block scales as uint8 (they are int8): negative scales become large positive ones."""

    name = "q6k-unsigned"
    quantized_formats = frozenset({"q6_k"})

    def dense(self, w):
        b = w.data.reshape(-1, 210)
        n = b.shape[0]
        ql, qh = b[:, :128].reshape(n, 2, 1, 64), b[:, 128:192].reshape(n, 2, 1, 32)
        scales, d = b[:, 192:208].float(), b[:, 208:210].contiguous().view(torch.float16).float()  # uint8!
        low = torch.cat((ql & 0x0F, ql >> 4), dim=2).reshape(n, 8, 32)
        high = torch.cat([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=2).reshape(n, 8, 32)
        q = ((low | (high << 4)).to(torch.int16) - 32).reshape(n, 16, 16).float()
        return ((d * scales)[:, :, None] * q).reshape(w.shape)



class _CommOnly:
    """Every op the reference's (each call a counted fallback); only the communicator is the backend's own."""

    contract_version = 2

    def __init__(self, device="cpu"):
        self.device = torch.device(device)


class _Drain:
    """LIFOCommunicator's receive handle: wait() receives everything outstanding from the peer."""

    def __init__(self, comm, src):
        self.comm, self.src = comm, src

    def wait(self):
        self.comm.drain(self.src)


class LIFOCommunicator(TorchCommunicator):
    """Receives posted to one peer are filled newest first, not in posting order (MPI's non-overtaking rule
    broken): AFD's micro-batches of equal size get each other's FFN outputs (unequal sizes, whose messages
    would not fit, are filled in order)."""

    def __init__(self, group):
        super().__init__(group)
        self.posted: dict[int, list] = {}

    def irecv(self, x, src):
        self.posted.setdefault(src, []).append(x)
        return _Drain(self, src)

    def ibroadcast(self, x, src):
        # the receiving end of a broadcast is a receive as well: deferred, then filled newest first
        if self.rank == src:
            return super().ibroadcast(x, src)
        self.posted.setdefault(("broadcast", src), []).append(x)
        return _Drain(self, ("broadcast", src))

    def drain(self, src):
        buffers, self.posted[src] = self.posted.get(src, []), []
        same = len({tuple(b.shape) for b in buffers}) == 1
        for buf in reversed(buffers) if same else buffers:
            if isinstance(src, tuple):
                super().ibroadcast(buf, src[1]).wait()
            else:
                self.recv(buf, src)


class Bf16WireCommunicator(TorchCommunicator):
    """Point-to-point messages rounded to bfloat16 on the wire to halve the bytes (Step-3 sends FP8, but as a
    declared format with scales, not silently): float32 activations arrive changed."""

    def send(self, x, dst):
        super().send(x.to(torch.bfloat16).to(x.dtype), dst)

    def isend(self, x, dst):
        return super().isend(x.to(torch.bfloat16).to(x.dtype), dst)

    def ibroadcast(self, x, src):
        if self.rank != src:
            return super().ibroadcast(x, src)
        return super().ibroadcast(x.to(torch.bfloat16).to(x.dtype), src)


class LIFOReceives(_CommOnly):
    name = "lifo-receives"

    def make_communicator(self, group):
        return LIFOCommunicator(group)


class Bf16Wire(_CommOnly):
    name = "bf16-wire"

    def make_communicator(self, group):
        return Bf16WireCommunicator(group)
