"""The tiny MoE models keep clear router margins in every dtype, so the family check never fails a correct
backend because rounding resolved an expert near-tie the other way."""

import pytest
import torch

from modelchip.conformance import drive, tiny_models
from modelchip.runtime.backends import get_backend

MOE = ["qwen3_moe", "mixtral", "deepseek_v3", "step3_text"]


def _margins(family: str, dtype: torch.dtype) -> dict[str, float]:
    """Smallest gap at the top-k cut (softmax: in logits; sigmoid: in scores) and at the group cut."""
    ops = get_backend("reference")
    route, gaps = ops.moe_route, {}

    def recording(logits, top_k, scoring, norm, n_group=1, topk_group=1, correction_bias=None, scaling=1.0):
        x = logits.double()
        choice = torch.sigmoid(x) if scoring == "sigmoid" else torch.log_softmax(x, dim=-1)
        if correction_bias is not None:
            choice = choice + correction_bias.double()
        if n_group > 1 and topk_group < n_group:
            grouped = choice.view(x.shape[0], n_group, -1)
            score = grouped.topk(2, dim=-1).values.sum(-1) if correction_bias is not None else grouped.max(-1).values
            ordered = score.sort(dim=-1, descending=True).values
            gap = float((ordered[:, topk_group - 1] - ordered[:, topk_group]).min())
            gaps["group"] = min(gaps.get("group", 9.0), gap)
            keep = torch.zeros_like(score).scatter_(1, score.topk(topk_group, dim=-1).indices, 1.0).bool()
            choice = choice.masked_fill(~keep.repeat_interleave(x.shape[1] // n_group, dim=1), -1e9)
        ordered = choice.sort(dim=-1, descending=True).values
        gaps["top_k"] = min(gaps.get("top_k", 9.0), float((ordered[:, top_k - 1] - ordered[:, top_k]).min()))
        return route(logits, top_k, scoring, norm, n_group, topk_group, correction_bias, scaling)

    ops.moe_route = recording
    drive.run(tiny_models.build(ops, family, tiny_models.random_state(family), dtype), ops)
    return gaps


@pytest.mark.parametrize("family", MOE)
def test_router_margins(family):
    floor = 0.05 if family == "deepseek_v3" else 0.1
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        gaps = _margins(family, dtype)
        assert gaps and min(gaps.values()) >= floor, (family, dtype, gaps)


def test_every_runtime_family_has_a_tiny_model():
    from modelchip.runtime.models.decoder import FAMILIES

    assert set(tiny_models.CONFIGS) >= set(FAMILIES) - {"mistral", "kimi_k2"}  # aliases of llama, deepseek_v3
