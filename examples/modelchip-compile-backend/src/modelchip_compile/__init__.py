"""An out-of-tree modelchip backend: hot ops compiled with torch.compile, attention on fused SDPA.

Registered through the `modelchip.backends` entry point group as `compile`:
`LLM(model, backend="compile")` or `modelchip conformance --backend compile`.
"""

from modelchip_compile.backend import CompileBackend

__all__ = ["CompileBackend"]
__version__ = "0.1.0"
