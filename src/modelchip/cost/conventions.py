"""Counting conventions and number formats for per-token accounting.

Two conventions:
  paper  the Step-3 paper's (arXiv 2507.19427, section 4.1): absorbed MLA reads the whole 576-wide latent
         for both scores and values; linear attention costs 10 FLOPs per state element per token (the figure
         its Table 2 implies for MiniMax M1: (3.42e9 - 10 full layers' softmax FLOPs) / (70 layers x 64 heads
         x 128 x 128) = 10.0); router, embedding and LM head are left out.
  exact  what the arithmetic of the layers does: MLA values are 512 wide, linear attention decode is decay
         (1) + rank-1 update (2) + query read-out (2) = 5 FLOPs per state element, router and LM head counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelchip.errors import unknown
from modelchip.spec import dtypes


@dataclass(frozen=True)
class Convention:
    name: str
    mla_values_full_latent: bool
    linear_state_flops: float
    count_router: bool
    count_lm_head: bool


CONVENTIONS = {
    "paper": Convention("paper", mla_values_full_latent=True, linear_state_flops=10.0,
                        count_router=False, count_lm_head=False),
    "exact": Convention("exact", mla_values_full_latent=False, linear_state_flops=5.0,
                        count_router=True, count_lm_head=True),
}


def convention(name: str) -> Convention:
    if name not in CONVENTIONS:
        raise unknown("convention", name, CONVENTIONS)
    return CONVENTIONS[name]


def _unquantized(fmt: str) -> bool:
    """A 16- or 32-bit float format: a checkpoint kept in it has no quantizer's ignore list."""
    return fmt in ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """Number formats of a deployment.

    weight, kv: storage formats. compute: 'auto' picks the weight format where the chip has a peak for it
    (fp8, fp4), else bf16, as the paper does for A800 and 910B (8-bit weights and KV, BF16 compute).
    linear_state: the format of a linear-attention state (accumulated in fp32 by its kernels).
    honor_pins: keep KV formats a model's deployment fixes (e.g. MiniMax M1's BF16 full-attention KV).
    attention_weight: the format of the attention projections and LM head where it differs from the FFN's
    (FP8 or BF16 attention beside FP4 experts, as NVIDIA's FP4 DeepSeek-R1 checkpoint keeps it); '' = weight.
    lm_head_weight: the LM head's format where the checkpoint says (a GGUF file often keeps its output matrix at
    Q8_0 or Q6_K beside Q4 layers); '' = the rule in `head_dtype`.
    embedding_weight: the token embedding table's format where the checkpoint says (a GGUF token_embd tensor);
    '' = the rule in `embedding_dtype`.
    ffn_down_weight: the dense FFN's down projection's format where a quantizer left it wider than the FFN's
    other matmuls (msModelSlim's W8A8 falls every down_proj back to float by default); '' = weight.
    A matmul kept in a float format wider than an integer `compute` runs in that float format: the quantizer
    left its activations unquantized too.
    """

    weight: str = "fp8"
    kv: str = "fp8"
    compute: str = "auto"
    linear_state: str = "fp32"
    honor_pins: bool = True
    attention_weight: str = ""
    lm_head_weight: str = ""
    ffn_down_weight: str = ""
    embedding_weight: str = ""

    def __post_init__(self):
        for name in ("weight", "kv", "linear_state"):
            object.__setattr__(self, name, dtypes.canonical(getattr(self, name)))
        for name in ("attention_weight", "lm_head_weight", "ffn_down_weight", "embedding_weight"):
            if getattr(self, name):
                object.__setattr__(self, name, dtypes.canonical(getattr(self, name)))
        if self.compute != "auto":
            object.__setattr__(self, "compute", dtypes.canonical(self.compute))

    def embedding_dtype(self) -> str:
        """The token embedding's storage format. Quantizers target the GEMM layers (compressed-tensors'
        "targets": ["Linear"]; "only the weights and activations of the linear operators within transformers
        blocks are quantized", huggingface.co/neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8 model card; DeepSeek-V3's
        ParallelEmbedding is built in the default BF16, inference/model.py) and leave the embedding, a table read
        by row, in the checkpoint's float format: BF16 beside quantized layers, unless a GGUF file says otherwise
        (embedding_weight)."""
        if self.embedding_weight:
            return self.embedding_weight
        return self.weight if _unquantized(self.weight) else "bf16"

    def head_dtype(self) -> str:
        """The LM head's storage (and per-step streaming) format. Quantized checkpoints leave it unquantized:
        ModelOpt writes "exclude_modules": ["lm_head"] into hf_quant_config.json (its FP8 and NVFP4 exports, e.g.
        huggingface.co/TheHouseOfTheDude/Behemoth-R1-V2_ModelOpt-NVFP4 hf_quant_config.json, modelopt 0.41.0),
        llm-compressor writes "ignore": ["lm_head"] (huggingface.co/neuralmagic/
        Meta-Llama-3.1-70B-Instruct-FP8-dynamic config.json), AMD Quark's MXFP4 DeepSeek-R1 was made with
        --exclude_layers "*lm_head" (huggingface.co/amd/DeepSeek-R1-MXFP4 README), and DeepSeek-V3's own FP8
        release builds its head as ColumnParallelLinear(dim, vocab_size, dtype=torch.get_default_dtype()), BF16
        (github.com/deepseek-ai/DeepSeek-V3 inference/model.py). Unquantized deployments keep it in the attention
        projections' float format."""
        if self.lm_head_weight:
            return self.lm_head_weight
        attention = self.attention_weight or self.weight
        return attention if _unquantized(attention) else "bf16"

    def kv_bytes(self, pinned: str | None) -> float:
        return dtypes.nbytes(pinned if (pinned and self.honor_pins) else self.kv)

    def compute_dtype(self, chip, weight: str | None = None) -> str:
        """The format the chip's math runs in for weights of `weight` (default: the deployment's)."""
        weight = dtypes.BASE.get(weight or self.weight, weight or self.weight)
        if self.compute != "auto":
            # a float layer beside integer compute (a W8A8 checkpoint's unquantized LM head or down_proj) has
            # float activations, so it cannot run on the integer units
            if self.compute in ("int8", "int4") and weight in ("bf16", "fp16"):
                return "bf16"
            return self.compute
        if weight in ("fp8", "fp4") and chip.peak(weight):
            return weight
        if weight == "fp4" and chip.peak("fp8"):
            return "fp8"
        if weight == "fp32" and chip.peak("fp32"):
            return "fp32"
        return "bf16"


PAPER = CONVENTIONS["paper"]
EXACT = CONVENTIONS["exact"]
