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
