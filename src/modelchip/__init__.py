"""modelchip: model-chip co-design for LLM inference."""

__version__ = "0.1.0"
__all__ = ["LLM", "__version__"]


def __getattr__(name: str):
    # the runtime needs torch; the cost model does not, so load it only when asked for
    if name == "LLM":
        from modelchip.llm import LLM

        return LLM
    raise AttributeError(f"module 'modelchip' has no attribute {name!r}")
