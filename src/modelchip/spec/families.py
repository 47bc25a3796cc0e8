"""Per-family readers: an HF config.json (as a dict) becomes a ModelSpec.

Each reader takes the fields its family's config.json really has (the names transformers / vLLM use) and
says which one is missing when a config is incomplete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from modelchip.errors import ModelchipError
from modelchip.spec.model import AttentionSpec, FFNSpec, LayerSpec, ModelSpec
from modelchip.spec.validate import validate

_REQUIRED = object()


class Config:
    """Read access to one config dict that names the field and family when something is missing."""

    def __init__(self, data: dict, model_type: str):
        self.data = data
        self.model_type = model_type

    def get(self, key: str, default=_REQUIRED):
        value = self.data.get(key, default)
        if value is _REQUIRED or (value is None and default is _REQUIRED):
            raise ModelchipError(
                f"config.json is missing field {key!r}, which model_type {self.model_type!r} needs"
            )
        return value

    def first(self, *keys: str, default=_REQUIRED):
        """The first of several alternative field names that is present (configs rename fields over time)."""
        for key in keys:
            if self.data.get(key) is not None:
                return self.data[key]
        if default is _REQUIRED:
            raise ModelchipError(
                f"config.json is missing field {keys[0]!r} (or {', '.join(repr(k) for k in keys[1:])}), "
                f"which model_type {self.model_type!r} needs"
            )
        return default

    def rope_theta(self, default: float = 10000.0) -> float:
        # transformers 5 moved rope_theta into rope_parameters
        params = self.data.get("rope_parameters") or {}
        return float(self.data.get("rope_theta") or params.get("rope_theta") or default)

    def rope_scaling(self) -> dict | None:
        scaling = self.data.get("rope_scaling") or self.data.get("rope_parameters")
        if not scaling or scaling.get("rope_type", scaling.get("type")) in (None, "default"):
            return None
        return dict(scaling)


def _heads(c: Config) -> int:
    heads = int(c.get("num_attention_heads"))
    if heads <= 0:  # checked here: head_dim defaults to hidden_size // heads
        raise ModelchipError(f"num_attention_heads is {heads}; it must be a positive integer")
    return heads


def _gqa(c: Config, *, qk_norm: bool = False, qkv_bias: bool = False, o_bias: bool = False,
         window: int = 0) -> AttentionSpec:
    heads = _heads(c)
    kv_heads = c.get("num_key_value_heads", None)  # absent or null: MHA (0 is an error, not a default)
    kv_heads = heads if kv_heads is None else int(kv_heads)
    head_dim = int(c.get("head_dim", None) or c.get("hidden_size") // heads)
    return AttentionSpec(
        kind="gqa",
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        v_head_dim=head_dim,
        qk_norm=qk_norm,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        window=window,
    )


def _dense(width: int, bias: bool = False) -> FFNSpec:
    return FFNSpec(kind="dense", intermediate_size=int(width), bias=bias)


def _attention_bias(c: Config) -> bool:
    """Llama, Qwen3, Qwen3-MoE and DeepSeek-V3 put a bias on every attention projection when it is true."""
    return bool(c.get("attention_bias", False))


def _windows(c: Config, num_layers: int) -> list[int]:
    """Each layer's sliding window (0: global), as transformers applies the family's fields.

    Mistral and Mixtral slide every layer when sliding_window is set. Qwen2/Qwen3(-MoE) slide only with
    use_sliding_window: Qwen3-MoE every layer, Qwen2/Qwen3 the layers `layer_types` marks (by default those
    from max_window_layers on).
    """
    if c.model_type in ("mistral", "mixtral"):
        return [int(c.get("sliding_window", None) or 0)] * num_layers
    if c.model_type not in ("qwen2", "qwen3", "qwen3_moe") or not c.get("use_sliding_window", False):
        return [0] * num_layers
    window = int(c.get("sliding_window"))
    if window < 1:
        raise ModelchipError(f"config.json sets use_sliding_window but sliding_window is {window}")
    if c.model_type == "qwen3_moe":
        return [window] * num_layers
    types = c.get("layer_types", None)
    if types is None:
        start = int(c.get("max_window_layers", 0) or 0)
        return [window if i >= start else 0 for i in range(num_layers)]
    if len(types) != num_layers:
        raise ModelchipError(f"layer_types has {len(types)} entries but num_hidden_layers is {num_layers}")
    unknown_types = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown_types:
        raise ModelchipError(f"layer_types entry {unknown_types[0]!r} is not supported for model_type "
                             f"{c.model_type!r} (full_attention, sliding_attention)")
    return [window if t == "sliding_attention" else 0 for t in types]


def _windowed(attn: AttentionSpec, window: int) -> AttentionSpec:
    return replace(attn, window=window) if window else attn


def _spec(c: Config, layers: list[LayerSpec], name: str, **extra) -> ModelSpec:
    if not layers:
        raise ModelchipError("config.json describes a model with no layers (num_hidden_layers is 0)")
    return ModelSpec(
        name=name,
        family=c.model_type,
        hidden_size=int(c.get("hidden_size")),
        vocab_size=int(c.get("vocab_size")),
        layers=tuple(layers),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        rms_norm_eps=float(c.first("rms_norm_eps", "layer_norm_eps", "norm_eps", default=1e-6)),
        rope_theta=c.rope_theta(),
        rope_scaling=c.rope_scaling(),
        max_position_embeddings=int(c.first("max_position_embeddings", "max_position_embedding",
                                            "max_seq_len", default=0)),
        config=c.data,
        **extra,
    )


def llama(c: Config, name: str) -> ModelSpec:
    """llama, mistral, qwen2, qwen3 and other dense GQA decoders."""
    mt = c.model_type
    bias = mt in ("llama", "qwen3") and _attention_bias(c)  # Qwen2: q/k/v biases always, o_proj none
    attn = _gqa(c, qk_norm=mt == "qwen3", qkv_bias=mt == "qwen2" or bias, o_bias=bias)
    ffn = _dense(c.get("intermediate_size"), bias=mt == "llama" and bool(c.get("mlp_bias", False)))
    num_layers = int(c.get("num_hidden_layers"))
    return _spec(c, [LayerSpec(_windowed(attn, w), ffn) for w in _windows(c, num_layers)], name)


def qwen3_moe(c: Config, name: str) -> ModelSpec:
    """qwen2_moe / qwen3_moe: MoE every `decoder_sparse_step` layers except `mlp_only_layers`."""
    bias = c.model_type == "qwen3_moe" and _attention_bias(c)
    attn = _gqa(c, qk_norm=c.model_type == "qwen3_moe", qkv_bias=c.model_type == "qwen2_moe" or bias, o_bias=bias)
    shared = int(c.get("shared_expert_intermediate_size", 0) or 0)
    moe = FFNSpec(
        kind="moe",
        intermediate_size=int(c.get("moe_intermediate_size")),
        num_experts=int(c.first("num_experts", "num_local_experts")),  # transformers 5 writes the latter
        top_k=int(c.get("num_experts_per_tok")),
        shared_intermediate_size=shared,
        norm_topk_prob=bool(c.get("norm_topk_prob", True)),
    )
    step = int(c.get("decoder_sparse_step", 1) or 1)
    dense_only = set(c.get("mlp_only_layers", []) or [])
    layers = []
    num_layers = int(c.get("num_hidden_layers"))
    for i, window in enumerate(_windows(c, num_layers)):
        is_moe = i not in dense_only and moe.num_experts > 0 and (i + 1) % step == 0
        layers.append(LayerSpec(_windowed(attn, window), moe if is_moe else _dense(c.get("intermediate_size"))))
    return _spec(c, layers, name)


def mixtral(c: Config, name: str) -> ModelSpec:
    attn = _gqa(c, window=int(c.get("sliding_window", None) or 0))
    moe = FFNSpec(
        kind="moe",
        intermediate_size=int(c.get("intermediate_size")),
        num_experts=int(c.get("num_local_experts")),
        top_k=int(c.get("num_experts_per_tok")),
    )
    return _spec(c, [LayerSpec(attn, moe)] * int(c.get("num_hidden_layers")), name)


def deepseek_v3(c: Config, name: str) -> ModelSpec:
    """deepseek_v3 / kimi_k2: MLA attention, the first `first_k_dense_replace` layers dense, then MoE."""
    rope = int(c.get("qk_rope_head_dim"))
    attn = AttentionSpec(
        kind="mla",
        num_heads=int(c.get("num_attention_heads")),
        num_kv_heads=int(c.get("num_attention_heads")),
        head_dim=int(c.get("qk_nope_head_dim")) + rope,
        v_head_dim=int(c.get("v_head_dim")),
        q_lora_rank=int(c.get("q_lora_rank", 0) or 0),
        kv_lora_rank=int(c.get("kv_lora_rank")),
        qk_rope_head_dim=rope,
        qkv_bias=_attention_bias(c),
        o_bias=_attention_bias(c),
    )
    moe_width = int(c.get("moe_intermediate_size"))
    moe = FFNSpec(
        kind="moe",
        intermediate_size=moe_width,
        num_experts=int(c.get("n_routed_experts")),
        top_k=int(c.get("num_experts_per_tok")),
        shared_intermediate_size=moe_width * int(c.get("n_shared_experts", 0) or 0),
        # transformers 5 configs drop scoring_func/topk_method: V3 always scores by sigmoid with a bias
        scoring=c.get("scoring_func", "sigmoid"),
        norm_topk_prob=bool(c.get("norm_topk_prob", True)),
        n_group=int(c.get("n_group", 1) or 1),
        topk_group=int(c.get("topk_group", 1) or 1),
        routed_scaling_factor=float(c.get("routed_scaling_factor", 1.0) or 1.0),
        router_bias=c.get("topk_method", "noaux_tc") == "noaux_tc",
    )
    first_dense = int(c.get("first_k_dense_replace", 0) or 0)
    freq = int(c.get("moe_layer_freq", 1) or 1)
    dense = _dense(c.get("intermediate_size"))
    layers = [
        LayerSpec(attn, moe if i >= first_dense and i % freq == 0 else dense)
        for i in range(int(c.get("num_hidden_layers")))
    ]
    return _spec(c, layers, name)


def step3(c: Config, name: str) -> ModelSpec:
    """Step-3 text model: MFA attention (low-rank query, `num_attention_groups` shared K/V heads) + MoE."""
    heads = _heads(c)
    head_dim = int(c.get("head_dim", None) or c.get("hidden_size") // heads)
    attn = AttentionSpec(
        kind="mfa",
        num_heads=heads,
        num_kv_heads=int(c.get("num_attention_groups")),
        head_dim=head_dim,
        v_head_dim=head_dim,
        q_lora_rank=int(c.get("share_q_dim")),
    )
    moe_layers = c.get("moe_layers_enum", None)
    num_layers = int(c.get("num_hidden_layers"))
    if isinstance(moe_layers, str):
        moe_idx = {int(x) for x in moe_layers.split(",") if x.strip()}
    elif moe_layers is not None:
        moe_idx = {int(x) for x in moe_layers}
    else:  # vLLM's default for Step3TextConfig: every layer but the first four and the last
        moe_idx = set(range(4, num_layers - 1))
    shared = int(c.get("share_expert_dim", 0) or 0)
    moe = FFNSpec(
        kind="moe",
        intermediate_size=int(c.get("moe_intermediate_size")),
        num_experts=int(c.get("moe_num_experts")),
        top_k=int(c.get("moe_top_k")),
        shared_intermediate_size=shared,
        norm_topk_prob=bool(c.get("norm_expert_weight", False)),
    )
    dense = _dense(c.get("intermediate_size"))
    layers = [LayerSpec(attn, moe if i in moe_idx else dense) for i in range(num_layers)]
    return _spec(c, layers, name)


def llama4(c: Config, name: str) -> ModelSpec:
    """Llama 4: chunked local attention on RoPE layers, global NoPE attention on the others; MoE interleaved."""
    num_layers = int(c.get("num_hidden_layers"))
    chunk = int(c.get("attention_chunk_size", 0) or 0)
    no_rope = c.get("no_rope_layers", None)
    if not no_rope:  # transformers' default: every 4th layer has no RoPE and attends globally
        interval = int(c.get("no_rope_layer_interval", 4) or 4)
        no_rope = [int((i + 1) % interval != 0) for i in range(num_layers)]
    base = _gqa(c, qk_norm=bool(c.get("use_qk_norm", False)))
    local = AttentionSpec(**{**base.__dict__, "window": chunk})
    step = int(c.get("interleave_moe_layer_step", 1) or 1)
    moe_layers = c.get("moe_layers", None)
    if moe_layers is None:
        moe_layers = list(range(step - 1, num_layers, step))
    width = int(c.get("intermediate_size"))
    moe = FFNSpec(
        kind="moe",
        intermediate_size=width,
        num_experts=int(c.get("num_local_experts")),
        top_k=int(c.get("num_experts_per_tok")),
        shared_intermediate_size=width,  # one shared expert of the routed experts' width
        scoring="sigmoid",
        norm_topk_prob=False,
    )
    dense = _dense(c.get("intermediate_size_mlp"))
    moe_set = set(moe_layers)
    layers = [
        LayerSpec(local if (no_rope[i] and chunk) else base, moe if i in moe_set else dense)
        for i in range(num_layers)
    ]
    return _spec(c, layers, name)


def minimax(c: Config, name: str) -> ModelSpec:
    """MiniMax-Text-01 / M1: lightning (linear) attention, softmax attention where attn_type_list is 1."""
    num_layers = int(c.get("num_hidden_layers"))
    types = c.get("attn_type_list")
    if len(types) != num_layers:
        raise ModelchipError(f"attn_type_list has {len(types)} entries but num_hidden_layers is {num_layers}")
    full = _gqa(c)
    linear = AttentionSpec(
        kind="linear",
        num_heads=full.num_heads,
        num_kv_heads=full.num_heads,
        head_dim=full.head_dim,
        v_head_dim=full.head_dim,
        output_gate=True,
    )
    shared = int(c.get("shared_intermediate_size", 0) or 0)
    moe = FFNSpec(
        kind="moe",
        intermediate_size=int(c.get("intermediate_size")),
        num_experts=int(c.get("num_local_experts")),
        top_k=int(c.get("num_experts_per_tok")),
        shared_intermediate_size=shared,
    )
    layers = [LayerSpec(full if int(t) == 1 else linear, moe) for t in types]
    return _spec(c, layers, name)


def ernie45_moe(c: Config, name: str) -> ModelSpec:
    """ERNIE 4.5 MoE: MoE from moe_layer_start_index every moe_layer_interval layers."""
    num_layers = int(c.get("num_hidden_layers"))
    attn = _gqa(c, qkv_bias=bool(c.get("use_bias", False)))
    k = c.get("moe_k")
    experts = c.get("moe_num_experts")
    if isinstance(experts, list):  # multimodal variants list text and vision experts
        experts = experts[0]
    moe_width = c.get("moe_intermediate_size")
    if isinstance(moe_width, list):
        moe_width = moe_width[0]
    moe = FFNSpec(
        kind="moe",
        intermediate_size=int(moe_width),
        num_experts=int(experts),
        top_k=int(k),
        shared_intermediate_size=int(moe_width) * int(c.get("moe_num_shared_experts", 0) or 0),
        norm_topk_prob=True,
    )
    start = int(c.get("moe_layer_start_index", 0) or 0)
    end = c.get("moe_layer_end_index", None)
    end = num_layers - 1 if end in (None, -1) else int(end)
    interval = int(c.get("moe_layer_interval", 1) or 1)
    dense = _dense(c.get("intermediate_size"))
    layers = [
        LayerSpec(attn, moe if start <= i <= end and (i - start) % interval == 0 else dense)
        for i in range(num_layers)
    ]
    return _spec(c, layers, name)


def pangu_pro_moe(c: Config, name: str) -> ModelSpec:
    """Pangu Pro MoE: grouped experts (MoGE, an equal number chosen from each group) plus shared experts."""
    num_layers = int(c.get("num_hidden_layers"))
    attn = _gqa(c, qkv_bias=bool(c.get("attention_bias", False)))
    experts = int(c.first("num_experts", "num_routed_experts"))
    # MoGE: the released config has no group field; the Pangu Pro MoE paper (arXiv 2505.21411) splits the
    # 64 experts into 8 groups (one per device) and picks top_k / 8 experts from each
    groups = int(c.first("num_experts_groups", "num_expert_groups", "n_group", default=8))
    top_k = int(c.get("num_experts_per_tok"))
    moe = FFNSpec(
        kind="moe",
        intermediate_size=int(c.get("moe_intermediate_size")),
        num_experts=experts,
        top_k=top_k,
        shared_intermediate_size=int(c.get("shared_expert_intermediate_size", 0) or 0),
        n_group=groups,
        topk_group=groups,
    )
    return _spec(c, [LayerSpec(attn, moe)] * num_layers, name)


READERS: dict[str, Callable[[Config, str], ModelSpec]] = {
    "llama": llama,
    "mistral": llama,
    "qwen2": llama,
    "qwen3": llama,
    "qwen2_moe": qwen3_moe,
    "qwen3_moe": qwen3_moe,
    "mixtral": mixtral,
    "deepseek_v3": deepseek_v3,
    "kimi_k2": deepseek_v3,
    "step3_text": step3,
    "llama4_text": llama4,
    "minimax": minimax,
    "minimax_m1": minimax,
    "minimax_text_01": minimax,
    "ernie4_5_moe": ernie45_moe,
    "pangu_pro_moe": pangu_pro_moe,
    "PanguProMoE": pangu_pro_moe,
}

# Multimodal wrappers whose language model lives in text_config.
WRAPPERS = {"step3_vl": "step3_text", "llama4": "llama4_text"}

# Field-name aliases: a what-if may use the common HF name for a field a family spells its own way.
FIELD_ALIASES = {
    "step3_text": {"num_key_value_heads": "num_attention_groups", "num_experts": "moe_num_experts",
                   "num_experts_per_tok": "moe_top_k", "q_lora_rank": "share_q_dim"},
    "deepseek_v3": {"num_experts": "n_routed_experts"},
    "kimi_k2": {"num_experts": "n_routed_experts"},
    "mixtral": {"num_experts": "num_local_experts"},
    "minimax": {"num_experts": "num_local_experts"},
    "minimax_m1": {"num_experts": "num_local_experts"},
    "llama4_text": {"num_experts": "num_local_experts"},
    "ernie4_5_moe": {"num_experts": "moe_num_experts", "num_experts_per_tok": "moe_k"},
}


def text_config(config: dict) -> tuple[dict, str]:
    """The language model's config and its model_type, unwrapping multimodal configs."""
    model_type = config.get("model_type")
    if model_type is None:
        raise ModelchipError("config.json has no 'model_type' field, so its family is unknown")
    if model_type in WRAPPERS:
        inner = config.get("text_config")
        if not isinstance(inner, dict):
            raise ModelchipError(f"config.json of model_type {model_type!r} is missing field 'text_config'")
        inner = dict(inner)
        inner.setdefault("model_type", WRAPPERS[model_type])
        if inner["model_type"] not in READERS:
            inner["model_type"] = WRAPPERS[model_type]
        return inner, inner["model_type"]
    return config, model_type


def supported_model_types() -> list[str]:
    return sorted(set(READERS) | set(WRAPPERS))


def read(config: dict, name: str = "") -> ModelSpec:
    """Build a ModelSpec from an HF config dict (a multimodal config's text model is used)."""
    data, model_type = text_config(config)
    reader = READERS.get(model_type)
    if reader is None:
        raise ModelchipError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(supported_model_types())}"
        )
    try:
        spec = reader(Config(data, model_type), name or str(config.get("_name_or_path", model_type)))
        return validate(spec, FIELD_ALIASES.get(model_type))
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, ModelchipError):
            raise
        raise ModelchipError(f"config.json of model_type {model_type!r} has a malformed field: {exc}") from exc
