"""Tiny configs of every runtime family: the conformance kit's, so tests and vendors drive the same models."""

from modelchip.conformance.tiny_models import BASE, CONFIGS

__all__ = ["BASE", "CONFIGS"]
