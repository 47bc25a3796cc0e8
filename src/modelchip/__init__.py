"""modelchip: model-chip co-design for LLM inference."""

__version__ = "0.1.0"
