"""The runtime's Step-3 text model against an independent float64 implementation of Step-3's equations.

The reference below is written from the model's description (reference doc `codesign-step3.md`, vLLM's
`step3_text.py`), not from the runtime: per layer

    x = RMSNorm(h); q = x Wq (H -> share_q_dim); k = x Wk, v = x Wv (H -> g*d)
    q = RMSNorm_inter(q); q = q Wq_b (share_q_dim -> h*d)
    NeoX (half-split) RoPE on the full head_dim of q and k
    h query heads attend causally to g shared K/V heads (head i reads group i // (h/g)), scale d^-0.5
    h = h + o Wo
    y = RMSNorm(h)
    dense layers: h = h + down(silu(gate y) * up y)
    MoE layers:   p = softmax(y Wg) over all experts; top-k WITHOUT renormalising;
                  h = h + sum_k p_k expert_k(y) + shared_expert(y)
    logits = lm_head(RMSNorm(h))   (untied)

A tiny random checkpoint (float64 weights rounded to float32 and saved as safetensors) is written to a
temporary HF-style directory; the runtime must reproduce the reference's logits and its greedy continuation.
The reference's own tests (causality, routing actually used, known-wrong variants are far off) run even
while the runtime is missing.
"""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

F64 = torch.float64

HIDDEN = 64
LAYERS = 4
MOE_LAYERS = (1, 2)
HEADS = 8
HEAD_DIM = 16
SHARE_Q = 32
INTER = 96
EXPERTS = 6
TOP_K = 3
MOE_INTER = 32
SHARE_EXPERT = 32
VOCAB = 256
THETA = 10000.0
EPS = 1e-5
SEED = 20250719

PROMPT_LEN = 48
GEN_PROMPT_LEN = 20
GEN_TOKENS = 24
LOGIT_TOL = 1e-4


def make_config(groups: int) -> dict:
    return {
        "model_type": "step3_text",
        "architectures": ["Step3TextForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_attention_heads": HEADS,
        "num_attention_groups": groups,
        "head_dim": HEAD_DIM,
        "share_q_dim": SHARE_Q,
        "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB,
        "rms_norm_eps": EPS,
        "rope_theta": THETA,
        "max_position_embedding": 128,
        "moe_intermediate_size": MOE_INTER,
        "moe_num_experts": EXPERTS,
        "moe_top_k": TOP_K,
        "share_expert_dim": SHARE_EXPERT,
        "moe_layers_enum": ",".join(str(i) for i in MOE_LAYERS),
        "norm_expert_weight": False,
        "tie_word_embeddings": False,
    }


def make_weights(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random float64 weights. Scales are chosen so attention scores have std ~2 and router logits std ~2.4,
    i.e. attention is neither uniform nor one-hot and routing varies from token to token."""
    gen = torch.Generator().manual_seed(seed)
    H, d, g, h = cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_groups"], cfg["num_attention_heads"]
    sq, inter, E = cfg["share_q_dim"], cfg["intermediate_size"], cfg["moe_num_experts"]
    im, isx, V = cfg["moe_intermediate_size"], cfg["share_expert_dim"], cfg["vocab_size"]
    moe_layers = {int(i) for i in cfg["moe_layers_enum"].split(",")}

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=gen, dtype=F64) * std

    def norm_w(n):
        return 1.0 + randn(n, std=0.1)

    w = {
        "model.embed_tokens.weight": randn(V, H),
        "model.norm.weight": norm_w(H),
        "lm_head.weight": randn(V, H, std=2.0 / math.sqrt(H)),
    }
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        w[p + "input_layernorm.weight"] = norm_w(H)
        w[p + "post_attention_layernorm.weight"] = norm_w(H)
        w[p + "self_attn.q_proj.weight"] = randn(sq, H, std=1.0 / math.sqrt(H))
        w[p + "self_attn.k_proj.weight"] = randn(g * d, H, std=1.5 / math.sqrt(H))
        w[p + "self_attn.v_proj.weight"] = randn(g * d, H, std=1.0 / math.sqrt(H))
        w[p + "self_attn.inter_norm.weight"] = norm_w(sq)
        w[p + "self_attn.wq.weight"] = randn(h * d, sq, std=1.5 / math.sqrt(sq))
        w[p + "self_attn.o_proj.weight"] = randn(H, h * d, std=1.0 / math.sqrt(h * d))
        if n in moe_layers:
            w[p + "moe.gate.weight"] = randn(E, H, std=0.3)
            w[p + "moe.gate_proj.weight"] = randn(E, im, H, std=1.0 / math.sqrt(H))
            w[p + "moe.up_proj.weight"] = randn(E, im, H, std=1.0 / math.sqrt(H))
            w[p + "moe.down_proj.weight"] = randn(E, H, im, std=1.0 / math.sqrt(im))
            w[p + "share_expert.gate_proj.weight"] = randn(isx, H, std=1.0 / math.sqrt(H))
            w[p + "share_expert.up_proj.weight"] = randn(isx, H, std=1.0 / math.sqrt(H))
            w[p + "share_expert.down_proj.weight"] = randn(H, isx, std=1.0 / math.sqrt(isx))
        else:
            w[p + "mlp.gate_proj.weight"] = randn(inter, H, std=1.0 / math.sqrt(H))
            w[p + "mlp.up_proj.weight"] = randn(inter, H, std=1.0 / math.sqrt(H))
            w[p + "mlp.down_proj.weight"] = randn(H, inter, std=1.0 / math.sqrt(inter))
    return w


# ----------------------------------------------------------------------------------------------------------
# The float64 reference. Plain torch ops only; nothing from modelchip.
# ----------------------------------------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def silu(x):
    return x / (1.0 + torch.exp(-x))


def swiglu(x, gate_w, up_w, down_w):
    return (silu(x @ gate_w.T) * (x @ up_w.T)) @ down_w.T


def rope(x, positions, theta, interleaved=False):
    """x [T, n, d]; rotate pairs (i, i + d/2) by angle pos * theta^(-2i/d) (NeoX / half-split style)."""
    d = x.shape[-1]
    half = d // 2
    inv_freq = theta ** (-2.0 * torch.arange(half, dtype=F64) / d)
    angle = positions.to(F64)[:, None] * inv_freq[None, :]  # [T, d/2]
    cos = torch.cos(angle)[:, None, :]
    sin = torch.sin(angle)[:, None, :]
    if interleaved:  # a known-wrong variant (GPT-J pairs (2i, 2i+1)), only used to show the test can tell
        a, b = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = b * cos + a * sin
        return out
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def causal_attention(q, k, v, *, modulo_groups=False):
    """q [T, h, d], k and v [T, g, d] -> out [T, h, d] and probabilities [h, T, T]; head i reads group i // (h/g)."""
    T, h, d = q.shape
    g = k.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    out = torch.empty(T, h, d, dtype=F64)
    probs = torch.empty(h, T, T, dtype=F64)
    for i in range(h):
        grp = i % g if modulo_groups else i // (h // g)
        scores = (q[:, i, :] @ k[:, grp, :].T) * d**-0.5  # [T, T]
        scores = scores.masked_fill(~causal, float("-inf"))
        pr = torch.softmax(scores, dim=-1)
        probs[i] = pr
        out[:, i, :] = pr @ v[:, grp, :]
    return out, probs


def attention(x, w, p, cfg, *, variant=frozenset()):
    """x [T, H] (already normed) -> o_proj output [T, H], plus the attention probabilities [h, T, T]."""
    T = x.shape[0]
    h, g, d = cfg["num_attention_heads"], cfg["num_attention_groups"], cfg["head_dim"]
    q = x @ w[p + "self_attn.q_proj.weight"].T  # [T, share_q_dim]
    k = x @ w[p + "self_attn.k_proj.weight"].T  # [T, g*d]
    v = x @ w[p + "self_attn.v_proj.weight"].T  # [T, g*d]
    if "no_inter_norm" not in variant:
        q = rms_norm(q, w[p + "self_attn.inter_norm.weight"], cfg["rms_norm_eps"])
    q = q @ w[p + "self_attn.wq.weight"].T  # [T, h*d]
    q = q.reshape(T, h, d)
    k = k.reshape(T, g, d)
    v = v.reshape(T, g, d)
    positions = torch.arange(T)
    q = rope(q, positions, cfg["rope_theta"], interleaved="interleaved_rope" in variant)
    k = rope(k, positions, cfg["rope_theta"], interleaved="interleaved_rope" in variant)
    out, probs = causal_attention(q, k, v, modulo_groups="modulo_groups" in variant)
    return out.reshape(T, h * d) @ w[p + "self_attn.o_proj.weight"].T, probs


def moe(y, w, p, cfg, *, variant=frozenset()):
    """y [T, H] (already normed) -> routed + shared expert output [T, H], plus (top-k ids [T, k], probs [T, E])."""
    logits = y @ w[p + "moe.gate.weight"].T  # [T, E], no bias
    probs = torch.softmax(logits, dim=-1)
    top_p, top_i = torch.topk(probs, cfg["moe_top_k"], dim=-1)
    if "renormalize" in variant:
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(y)
    for t in range(y.shape[0]):
        for weight, e in zip(top_p[t].tolist(), top_i[t].tolist(), strict=True):
            out[t] += weight * swiglu(
                y[t], w[p + "moe.gate_proj.weight"][e], w[p + "moe.up_proj.weight"][e], w[p + "moe.down_proj.weight"][e]
            )
    if "no_shared_expert" not in variant:
        out = out + swiglu(
            y, w[p + "share_expert.gate_proj.weight"], w[p + "share_expert.up_proj.weight"],
            w[p + "share_expert.down_proj.weight"],
        )
    return out, (top_i, probs)


def reference_forward(ids, w, cfg, *, variant=frozenset()):
    """ids: list[int] -> (logits [T, V] float64, info with per-layer routing and attention probabilities)."""
    eps = cfg["rms_norm_eps"]
    moe_layers = {int(i) for i in cfg["moe_layers_enum"].split(",")}
    hs = w["model.embed_tokens.weight"][torch.tensor(ids, dtype=torch.long)]
    info = {"routing": {}, "attn": {}}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        a, info["attn"][n] = attention(rms_norm(hs, w[p + "input_layernorm.weight"], eps), w, p, cfg, variant=variant)
        hs = hs + a
        y = rms_norm(hs, w[p + "post_attention_layernorm.weight"], eps)
        if n in moe_layers:
            f, info["routing"][n] = moe(y, w, p, cfg, variant=variant)
        else:
            f = swiglu(y, w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"], w[p + "mlp.down_proj.weight"])
        hs = hs + f
    logits = rms_norm(hs, w["model.norm.weight"], eps) @ w["lm_head.weight"].T
    return logits, info


def reference_greedy(prompt, w, cfg, n_new):
    """Greedy continuation by re-running the whole sequence each step; also returns each step's top1 - top2 gap."""
    seq = list(prompt)
    new, gaps = [], []
    for _ in range(n_new):
        logits, _ = reference_forward(seq, w, cfg)
        top2 = torch.topk(logits[-1], 2)
        gaps.append(float(top2.values[0] - top2.values[1]))
        tok = int(top2.indices[0])
        new.append(tok)
        seq.append(tok)
    return new, gaps


# ----------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------


class Checkpoint:
    def __init__(self, path, cfg, weights, prompt, gen_prompt):
        self.path = path
        self.cfg = cfg
        self.weights = weights  # float64 copies of exactly the float32 values on disk
        self.prompt = prompt
        self.gen_prompt = gen_prompt


@pytest.fixture(scope="module", params=[1, 2], ids=["groups1", "groups2"])
def ckpt(request, tmp_path_factory):
    groups = request.param
    cfg = make_config(groups)
    w64 = make_weights(cfg, SEED + groups)
    path = tmp_path_factory.mktemp(f"step3_tiny_g{groups}")
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    w32 = {name: t.to(torch.float32).contiguous() for name, t in w64.items()}
    st.save_file(w32, str(path / "model.safetensors"))
    weights = {name: t.to(F64) for name, t in w32.items()}
    gen = torch.Generator().manual_seed(SEED + 100 + groups)
    prompt = torch.randint(0, VOCAB, (PROMPT_LEN,), generator=gen).tolist()
    gen_prompt = torch.randint(0, VOCAB, (GEN_PROMPT_LEN,), generator=gen).tolist()
    return Checkpoint(path, cfg, weights, prompt, gen_prompt)


@pytest.fixture(scope="module")
def reference(ckpt):
    return reference_forward(ckpt.prompt, ckpt.weights, ckpt.cfg)


@pytest.fixture(scope="module")
def llm(ckpt):
    from modelchip import LLM  # imported here so the reference's own tests run without the runtime

    return LLM(str(ckpt.path), backend="reference", device="cpu", dtype="float32")


# ----------------------------------------------------------------------------------------------------------
# The runtime against the reference
# ----------------------------------------------------------------------------------------------------------


def test_runtime_logits_match_float64_reference(ckpt, reference, llm):
    ref_logits, _ = reference
    out = llm.logits(list(ckpt.prompt))
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == (PROMPT_LEN, VOCAB)
    assert out.dtype == torch.float32
    err = (out.detach().cpu().to(F64) - ref_logits).abs()
    worst = int(err.max(dim=-1).values.argmax())
    assert float(err.max()) < LOGIT_TOL, (
        f"max |runtime - reference| = {float(err.max()):.3e} (tolerance {LOGIT_TOL}), worst at position {worst}; "
        f"first position over tolerance: {int((err.max(dim=-1).values >= LOGIT_TOL).nonzero()[0])}"
    )


@pytest.mark.slow  # a greedy generation loop on both implementations
def test_runtime_greedy_through_kv_cache_matches_reference(ckpt, llm):
    expected, gaps = reference_greedy(ckpt.gen_prompt, ckpt.weights, ckpt.cfg, GEN_TOKENS)
    # A float32 runtime can only be held to the float64 argmax where the top two logits are well apart.
    assert min(gaps) > 1e-3, f"fixture gives a near-tie in greedy decoding (gaps {gaps}); change SEED"
    out = llm.generate([list(ckpt.gen_prompt)], max_tokens=GEN_TOKENS, temperature=0.0)
    got = [int(t) for t in out[0].token_ids]
    assert got == expected


# ----------------------------------------------------------------------------------------------------------
# The reference itself: it must be causal, its routing and attention must be non-trivial, and the
# comparison above must be able to fail.
# ----------------------------------------------------------------------------------------------------------


def test_reference_is_causal(ckpt, reference):
    ref_logits, _ = reference
    cut = 30
    changed = list(ckpt.prompt)
    changed[cut:] = [(t + 1 + i) % VOCAB for i, t in enumerate(changed[cut:])]
    logits2, _ = reference_forward(changed, ckpt.weights, ckpt.cfg)
    torch.testing.assert_close(logits2[:cut], ref_logits[:cut], rtol=0, atol=1e-12)
    assert float((logits2[cut:] - ref_logits[cut:]).abs().max(dim=-1).values.min()) > 1e-3
    # A prefix run gives the same logits as the prefix of a longer run.
    logits3, _ = reference_forward(ckpt.prompt[:cut], ckpt.weights, ckpt.cfg)
    torch.testing.assert_close(logits3, ref_logits[:cut], rtol=0, atol=1e-12)


def test_reference_routing_and_attention_are_nontrivial(ckpt, reference):
    _, info = reference
    assert set(info["routing"]) == set(MOE_LAYERS)
    for layer, (top_i, probs) in info["routing"].items():
        choices = {tuple(sorted(row)) for row in top_i.tolist()}
        assert len(choices) >= 5, f"layer {layer}: top-{TOP_K} sets barely vary across tokens: {choices}"
        assert set(top_i.flatten().tolist()) == set(range(EXPERTS)), f"layer {layer}: some expert never chosen"
        # Routing is unambiguous: the k-th and (k+1)-th probabilities are apart, so float32 picks the same experts.
        sorted_p = probs.sort(dim=-1, descending=True).values
        assert float((sorted_p[:, TOP_K - 1] - sorted_p[:, TOP_K]).min()) > 1e-6
        # The dropped experts carry real weight, so renormalising (or not) is visible.
        assert float(sorted_p[:, :TOP_K].sum(dim=-1).mean()) < 0.95
    for layer, probs in info["attn"].items():
        last = probs[:, -1, :]  # every head, the last query over all PROMPT_LEN keys
        assert float(last.max()) < 0.99, f"layer {layer}: attention is one-hot"
        assert float(last.max(dim=-1).values.min()) > 3.0 / PROMPT_LEN, f"layer {layer}: attention is ~uniform"


def test_reference_changing_a_used_expert_changes_that_token(ckpt, reference):
    """Position 0 attends only to itself, so its output depends on exactly its own experts: changing an expert
    it routes to in the last MoE layer changes its logits far beyond the tolerance; changing one it does not
    route to leaves them untouched."""
    ref_logits, info = reference
    layer = MOE_LAYERS[-1]
    top_i, _ = info["routing"][layer]
    used = top_i[0].tolist()
    unused = [e for e in range(EXPERTS) if e not in used]
    name = f"model.layers.{layer}.moe.down_proj.weight"

    def perturbed(expert):
        w = dict(ckpt.weights)
        down = w[name].clone()
        down[expert] = down[expert] * -1.0 + 0.05
        w[name] = down
        return reference_forward(ckpt.prompt, w, ckpt.cfg)[0]

    for e in used:
        delta = float((perturbed(e)[0] - ref_logits[0]).abs().max())
        assert delta > 100 * LOGIT_TOL, f"expert {e} is used by token 0 but changing it moved logits by {delta:.2e}"
    delta = float((perturbed(unused[0])[0] - ref_logits[0]).abs().max())
    assert delta < 1e-12, f"expert {unused[0]} is not used by token 0 but changing it moved logits by {delta:.2e}"


@pytest.mark.parametrize(
    "variant", ["renormalize", "interleaved_rope", "no_inter_norm", "no_shared_expert", "modulo_groups"]
)
def test_reference_known_wrong_variants_are_far_off(ckpt, reference, variant):
    """Mistakes a runtime could make move the logits far beyond LOGIT_TOL, so the comparison would catch them."""
    if variant == "modulo_groups" and ckpt.cfg["num_attention_groups"] == 1:
        pytest.skip("with one K/V group every head reads the same group")
    ref_logits, _ = reference
    wrong, _ = reference_forward(ckpt.prompt, ckpt.weights, ckpt.cfg, variant=frozenset({variant}))
    assert float((wrong - ref_logits).abs().max()) > 100 * LOGIT_TOL


def test_reference_rope_and_attention_agree_with_textbook_forms():
    gen = torch.Generator().manual_seed(7)
    T, h, g, d = 11, 8, 2, HEAD_DIM
    # RoPE as complex rotation of z_i = x_i + j x_(i + d/2) by pos * theta^(-2i/d) ...
    x = torch.randn(T, 3, d, generator=gen, dtype=F64)
    pos = torch.arange(T)
    z = torch.complex(x[..., : d // 2], x[..., d // 2 :])
    freqs = pos.to(F64)[:, None] * THETA ** (-torch.arange(0, d, 2, dtype=F64) / d)
    z = z * torch.polar(torch.ones_like(freqs), freqs)[:, None, :]
    torch.testing.assert_close(rope(x, pos, THETA), torch.cat([z.real, z.imag], dim=-1), rtol=0, atol=1e-12)
    # ... so scores depend only on the distance between positions.
    q1, k1 = torch.randn(d, generator=gen, dtype=F64), torch.randn(d, generator=gen, dtype=F64)

    def score(m, n):
        qm = rope(q1[None, None].expand(m + 1, 1, d), torch.arange(m + 1), THETA)[m, 0]
        kn = rope(k1[None, None].expand(n + 1, 1, d), torch.arange(n + 1), THETA)[n, 0]
        return float(qm @ kn)

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-10)
    assert abs(score(5, 2) - score(5, 4)) > 1e-3
    # The grouped causal attention equals torch's SDPA with each K/V group repeated for its h/g query heads.
    q = torch.randn(T, h, d, generator=gen, dtype=F64)
    k = torch.randn(T, g, d, generator=gen, dtype=F64)
    v = torch.randn(T, g, d, generator=gen, dtype=F64)
    out, _ = causal_attention(q, k, v)
    kk = k.repeat_interleave(h // g, dim=1).transpose(0, 1)
    vv = v.repeat_interleave(h // g, dim=1).transpose(0, 1)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, is_causal=True)
    torch.testing.assert_close(out, sdpa.transpose(0, 1), rtol=0, atol=1e-12)
