"""Layers point one way: spec (no torch) <- cost (no torch) and runtime <- engine <- modelchip.llm and serve;
conformance, calibrate and report beside; cli on top. Checked on the import statements themselves (every
one, lazy imports inside functions included) and by importing the torch-free packages in a fresh process."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "modelchip"

UPPER = ("modelchip.cli", "modelchip.serve", "modelchip.llm", "modelchip.conformance", "modelchip.calibrate")
# package -> modules it must never import (a name and everything under it)
FORBIDDEN = {
    "spec": ("torch", "modelchip.cost", "modelchip.report", "modelchip.runtime", "modelchip.engine", *UPPER),
    "cost": ("torch", "modelchip.report", "modelchip.runtime", "modelchip.engine", *UPPER),
    "report": ("torch", "modelchip.runtime", "modelchip.engine", *UPPER),
    "runtime": ("modelchip.engine", "modelchip.report", *UPPER),
    "engine": UPPER,
    "serve": ("modelchip.cli", "modelchip.conformance", "modelchip.calibrate"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # from pkg import module
    return out


def violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, name in imported_modules(path):
            for banned in FORBIDDEN[layer]:
                if name == banned or name.startswith(banned + "."):
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer):
    assert (PACKAGE / layer).is_dir()
    assert violations(layer) == []


def test_the_scan_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The scanner itself: an import inside a function and a relative one are both found."""
    fake = tmp_path / "modelchip" / "runtime"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from modelchip.engine import LLMEngine\n\nfrom ..engine import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "modelchip")
    assert len(violations("runtime")) == 4  # two statements, each as a module and as a possible submodule


def test_spec_cost_and_planner_commands_never_load_torch():
    code = """
import contextlib, importlib, io, pkgutil, sys
import modelchip.spec, modelchip.cost, modelchip.report
for pkg in (modelchip.spec, modelchip.cost, modelchip.report):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
from modelchip.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["compare", "--models", "step3", "--chips", "h800", "--json"]) == 0
    assert main(["predict", "--model", "step3", "--chip", "h800", "--num-chips", "8", "--strategy", "ep",
                 "--batch", "4", "--json"]) == 0
    assert main(["plan", "--model", "llama-3.1-8b", "--chip", "h100", "--json"]) == 0
    assert main(["models", "step3", "--json"]) == 0
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


BLOCK_RUNTIME = "import sys\nfor m in ('torch', 'safetensors', 'tokenizers', 'jinja2'):\n    sys.modules[m] = None\n"


def test_planner_runs_without_the_runtime_extra():
    """`pip install modelchip` (no runtime extra) runs the planner: its commands work with torch, safetensors,
    tokenizers and jinja2 all unimportable."""
    code = BLOCK_RUNTIME + """
import contextlib, io
from modelchip.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    for argv in (["compare", "--models", "step3", "--chips", "h800", "--json"], ["chips", "--json"],
                 ["models", "deepseek-v3", "--json"], ["kv", "step3", "--json"], ["validate", "--json"]):
        assert main(argv) == 0, argv
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("argv", [["generate", "--model", "smollm2-135m", "--prompt", "hi"],
                                  ["calibrate", "--out", "never-written.json"]])
def test_runtime_commands_name_the_missing_extra(argv, tmp_path):
    code = BLOCK_RUNTIME + f"from modelchip.cli.main import main\nsys.exit(main({argv!r}))\n"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "modelchip[runtime]" in p.stderr and "Traceback" not in p.stderr, p.stderr
    code = BLOCK_RUNTIME + "from modelchip import LLM\n"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "modelchip[runtime]" in p.stderr, p.stderr
