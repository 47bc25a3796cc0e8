import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).parent))  # broken_backends


@pytest.fixture
def register(monkeypatch):
    """register(cls): make a backend class available by its name, for this test only."""
    from modelchip.runtime import backends

    def add(cls):
        monkeypatch.setitem(backends.BUILTIN, cls.name, cls)
        return cls.name

    return add


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """installed(cls, ...): register backend classes of broken_backends.py through a `modelchip.backends` entry
    point, as a vendor's pip-installed package does, so processes a parallel run spawns (which rebuild the
    registry from sys.path, not from this process's memory) find them too. Returns their names."""
    def add(*classes):
        site = tmp_path / "site"
        info = site / "modelchip_broken_backends-0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: modelchip-broken-backends\nVersion: 0\n")
        (info / "entry_points.txt").write_text("[modelchip.backends]\n" + "".join(
            f"{cls.name} = broken_backends:{cls.__name__}\n" for cls in classes))
        monkeypatch.syspath_prepend(str(site))
        return [cls.name for cls in classes]

    return add
