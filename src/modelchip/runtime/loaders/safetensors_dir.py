"""Tensors of an HF checkpoint directory: model.safetensors, sharded safetensors with their index, or
(only when the user opts in) PyTorch pickles read with weights_only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from modelchip.errors import ModelchipError


def tensor_files(path: Path, allow_pickle: bool = False) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelchipError(f"{index} is not a valid safetensors index: {exc}") from exc
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ModelchipError(f"{path} is missing shard(s) listed in its index: {', '.join(missing)}")
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(path.glob("*.bin")) + sorted(path.glob("*.pt")) + sorted(path.glob("*.pth"))
    if pickles and not allow_pickle:
        raise ModelchipError(
            f"{path} holds only PyTorch pickle weights ({pickles[0].name}); modelchip does not unpickle by "
            "default because a pickle can run code. Convert to safetensors, or pass allow_pickle=True to load "
            "them with torch.load(weights_only=True)")
    if pickles:
        return pickles
    raise ModelchipError(f"{path} has no weights (*.safetensors or, with allow_pickle, *.bin)")


class LazyTensor:
    """A safetensors tensor not read yet: its shape, and `read(index)` reading only the rows/columns asked for
    (a tensor-parallel rank reads its shard, never the whole checkpoint). Valid while its file is open."""

    def __init__(self, handle, name: str):
        self._handle, self.name = handle, name
        self._slice = handle.get_slice(name)
        self.shape = tuple(self._slice.get_shape())

    def read(self, index: tuple | None = None) -> torch.Tensor:
        return self._handle.get_tensor(self.name) if index is None else self._slice[index]


def iter_tensors(files: list[Path], lazy: bool = False) -> Iterator[tuple[str, torch.Tensor | LazyTensor]]:
    from safetensors import SafetensorError, safe_open

    for file in files:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                        yield name, LazyTensor(f, name) if lazy else f.get_tensor(name)
            except SafetensorError as exc:
                raise ModelchipError(f"{file} is not a readable safetensors file: {exc}") from exc
        else:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ModelchipError(f"{file} could not be read with torch.load(weights_only=True): {exc}") from exc
            yield from state.items()
