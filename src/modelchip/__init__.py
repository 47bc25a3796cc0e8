"""modelchip: model-chip co-design for LLM inference."""

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    # the runtime needs torch (the `runtime` extra); the cost model does not, so load it only when asked for
    try:
        if name == "LLM":
            from modelchip.llm import LLM

            return LLM
        if name == "SamplingParams":  # `from modelchip import LLM, SamplingParams`, as with vLLM
            from modelchip.engine.sampling_params import SamplingParams

            return SamplingParams
    except ModuleNotFoundError as exc:
        if exc.name in ("torch", "safetensors", "tokenizers", "jinja2"):
            raise ImportError(f"modelchip.{name} needs the runtime extra (missing module {exc.name!r}): "
                              "pip install 'modelchip[runtime]'") from exc
        raise
    raise AttributeError(f"module 'modelchip' has no attribute {name!r}")
