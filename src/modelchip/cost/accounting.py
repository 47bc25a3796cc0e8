"""Per-token accounting: what one token costs a model at a given context, in bytes and FLOPs.

Decode: one new token attends to `context` cached tokens. Prefill: a prompt of `context` tokens, reported
per prompt token (attention averaged over causal positions, the cache written once).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from modelchip.cost import attention, ffn
from modelchip.cost.conventions import PAPER, Convention, Precision
from modelchip.errors import ModelchipError
from modelchip.spec import dtypes
from modelchip.spec.model import ModelSpec

PHASES = ("decode", "prefill")
PAPER_PRECISION = Precision()  # everything 8-bit, the paper's section 4.1


@dataclass(frozen=True)
class Params:
    total: int
    active: int  # parameters one token uses: all layers' active blocks, the LM head, one embedding row
    embedding: int


@dataclass(frozen=True)
class TokenAccount:
    """Bytes and FLOPs per token (the paper's A, B, C, D plus what a deployment also pays)."""

    model: str
    phase: str
    context: int
    kv_bytes: float  # A: cache/state bytes read (decode) or written (prefill) per token
    attention_flops: float  # B: attention core
    linear_flops: float  # C: projections around the attention core
    ffn_flops: float  # D: activated FFN (routed + shared experts, dense layers)
    router_flops: float
    lm_head_flops: float
    weight_bytes: float  # activated weights, read once per step (divide by batch for per-token)
    kv_cache_bytes_per_token: float  # what one more cached token adds to the cache, all layers

    @property
    def arithmetic_intensity(self) -> float:
        """Attention-core FLOPs per cache byte: where the attention sits on a chip's roofline."""
        return self.attention_flops / self.kv_bytes if self.kv_bytes else float("inf")

    @property
    def total_flops(self) -> float:
        return self.attention_flops + self.linear_flops + self.ffn_flops + self.router_flops + self.lm_head_flops

    def as_dict(self) -> dict:
        d = asdict(self)
        d["arithmetic_intensity"] = self.arithmetic_intensity
        d["total_flops"] = self.total_flops
        return d


def _check_context(context) -> int:
    if isinstance(context, bool) or not isinstance(context, int | float) or context != int(context) or context <= 0:
        raise ModelchipError(f"context must be a positive whole number of tokens, got {context!r}")
    return int(context)


def account(
    spec: ModelSpec,
    context: int,
    phase: str = "decode",
    precision: Precision = PAPER_PRECISION,
    convention: Convention = PAPER,
) -> TokenAccount:
    """Per-token bytes and FLOPs of `spec` at `context` tokens (decode) or for a `context`-token prompt."""
    context = _check_context(context)
    if phase not in PHASES:
        raise ModelchipError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    H = spec.hidden_size
    kv = core = lin = ff = router = 0.0
    cache_bytes = 0.0
    active_weights = 0
    for layer, n in Counter(spec.layers).items():
        a, f = layer.attention, layer.ffn
        per_token_cache = attention.cached_elements(a) * precision.kv_bytes(a.kv_dtype)
        if phase == "decode":
            tokens = attention.attended(a, context)
            kv += n * attention.kv_bytes_read(a, tokens, precision)
        else:
            tokens = attention.mean_attended_prefill(a, context)
            # a prompt writes its cache once; a linear state is written once per prompt
            state = attention.state_elements(a) * dtypes.nbytes(precision.linear_state) / context
            kv += n * (per_token_cache + state)
        core += n * attention.core_flops(a, tokens, convention, phase)
        lin += n * attention.linear_flops(a, H)
        ff += n * ffn.flops(f, H)
        router += n * ffn.router_flops(f, H)
        cache_bytes += n * per_token_cache
        active_weights += n * (attention.projection_weights(a, H) + ffn.active_params(f, H))
    lm_head = 2.0 * H * spec.vocab_size
    active_weights += H * spec.vocab_size
    return TokenAccount(
        model=spec.name,
        phase=phase,
        context=context,
        kv_bytes=kv,
        attention_flops=core,
        linear_flops=lin,
        ffn_flops=ff,
        router_flops=router if convention.count_router else 0.0,
        lm_head_flops=lm_head if convention.count_lm_head else 0.0,
        weight_bytes=active_weights * dtypes.nbytes(precision.weight),
        kv_cache_bytes_per_token=cache_bytes,
    )


def params(spec: ModelSpec) -> Params:
    """Total and activated parameter counts (norms included)."""
    H, V = spec.hidden_size, spec.vocab_size
    total = active = 0
    for layer, n in Counter(spec.layers).items():
        a = attention.params(layer.attention, H) + 2 * H  # + the two RMSNorms around the blocks
        total += n * (a + ffn.params(layer.ffn, H))
        active += n * (a + ffn.active_params(layer.ffn, H))
    embedding = V * H
    lm_head = 0 if spec.tie_word_embeddings else V * H
    total += embedding + lm_head + H
    # a token reads one embedding row; the LM head (tied or not) is a full V x H matmul
    active += H + V * H + H
    return Params(total=total, active=active, embedding=embedding)


def kv_cache_bytes_per_token(spec: ModelSpec, kv_dtype: str = "bf16", honor_pins: bool = False) -> float:
    """Bytes one cached token takes across all layers (linear-attention layers cache nothing per token)."""
    precision = Precision(kv=kv_dtype, honor_pins=honor_pins)
    return sum(attention.cached_elements(layer.attention) * precision.kv_bytes(layer.attention.kv_dtype)
               for layer in spec.layers)
