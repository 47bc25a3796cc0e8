"""Cost of one FFN block per token: gated MLP (gate, up, down) or a mixture of such experts.

A routed token runs `top_k` experts of width I plus the shared expert(s) of total width I_shared; the router
is a H x E matrix. Each gated MLP of width w costs 3*H*w weights and 2*3*H*w FLOPs per token.
"""

from __future__ import annotations

from modelchip.spec.model import FFNSpec


def active_weights(f: FFNSpec, hidden: int) -> int:
    """Expert/MLP weights one token runs through (router excluded)."""
    if f.kind == "dense":
        return 3 * hidden * f.intermediate_size
    return 3 * hidden * (f.top_k * f.intermediate_size + f.shared_intermediate_size)


def router_weights(f: FFNSpec, hidden: int) -> int:
    return hidden * f.num_experts if f.kind == "moe" else 0


def params(f: FFNSpec, hidden: int) -> int:
    """All parameters of the block: every expert, shared experts, router (and its correction bias)."""
    if f.kind == "dense":
        return 3 * hidden * f.intermediate_size + (2 * f.intermediate_size + hidden if f.bias else 0)
    n = 3 * hidden * (f.num_experts * f.intermediate_size + f.shared_intermediate_size)
    return n + router_weights(f, hidden) + (f.num_experts if f.router_bias else 0)


def active_params(f: FFNSpec, hidden: int) -> int:
    return active_weights(f, hidden) + router_weights(f, hidden)


def flops(f: FFNSpec, hidden: int) -> float:
    return 2.0 * active_weights(f, hidden)


def router_flops(f: FFNSpec, hidden: int) -> float:
    return 2.0 * router_weights(f, hidden)


def sparsity(f: FFNSpec) -> float:
    """Activated / total experts, shared experts counted as experts of the routed width (Step-3 section 5.3)."""
    if f.kind == "dense":
        return 1.0
    shared = f.shared_intermediate_size / f.intermediate_size
    return (f.top_k + shared) / (f.num_experts + shared)
