"""Models and chips as data: typed specs parsed from HF config.json files and the chip catalog."""

from modelchip.spec.config import load_model, presets
from modelchip.spec.model import AttentionSpec, FFNSpec, LayerSpec, ModelSpec

__all__ = ["AttentionSpec", "FFNSpec", "LayerSpec", "ModelSpec", "load_model", "presets"]
