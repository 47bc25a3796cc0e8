"""A tiny random model written as an HF checkpoint directory (config.json + model.safetensors), so code that
loads checkpoints (a tensor-parallel rank reading its shards, the launcher) runs on real files, with no
transformers and no download. Tensor names and shapes are the ones the runtime's loader expects of HF files."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from modelchip.conformance.tiny_models import BIAS_STD, EMBED_STD, NORM_STD, WEIGHT_STD
from modelchip.runtime.backends import get_backend
from modelchip.runtime.models.decoder import DecoderLM
from modelchip.spec import families


def write_checkpoint(config: dict, path: str | Path, seed: int = 0) -> Path:
    """Seeded random float32 weights for `config` (a config.json dict with model_type) saved under `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        model = DecoderLM(get_backend("reference"), families.read(config, "tiny"), torch.float32)
        g = torch.Generator().manual_seed(seed)
        tensors = {}
        for name, slot in model.slots().items():
            shape = tuple(slot.target().shape)
            noise = torch.randn(shape, generator=g)
            if len(shape) == 1 and "norm" in name:
                value = 1.0 + NORM_STD * noise
            elif len(shape) == 1:
                value = BIAS_STD * noise
            elif "embed_tokens" in name or "lm_head" in name:
                value = EMBED_STD * noise
            else:
                value = WEIGHT_STD * noise
            tensors[name] = value.contiguous()
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path
