"""The example plugin (examples/modelchip-compile-backend): pip-installable, found through its entry point,
conformant, and robust when torch.compile cannot compile.

The full conformance run with every shape through torch.compile compiles about 50 kernels: ~50 s on 2 cores
with a cold inductor cache, ~15 s warm. It is marked slow (deselect with -m "not slow"); the rest takes seconds.
"""

import shutil
import subprocess
import sys
import tomllib
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch

from modelchip.conformance import run
from modelchip.runtime import backends
from modelchip.runtime.backends.reference import ReferenceBackend

EXAMPLE = Path(__file__).parents[2] / "examples" / "modelchip-compile-backend"


def _forget_plugin():
    for name in [m for m in sys.modules if m == "modelchip_compile" or m.startswith("modelchip_compile.")]:
        del sys.modules[name]


@pytest.fixture
def plugin_source(monkeypatch):
    """The example's source on sys.path (not installed): for unit tests of the backend class."""
    _forget_plugin()
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    yield
    _forget_plugin()


def _setuptools_can_build() -> bool:
    try:
        return int(metadata.version("setuptools").split(".")[0]) >= 77  # the example's build requirement
    except metadata.PackageNotFoundError:
        return False


def _check_discovered(site: Path, monkeypatch) -> None:
    """With `site` on sys.path, the `compile` backend is found by its entry point, and passes."""
    _forget_plugin()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MODELCHIP_COMPILE", "0")  # entry-point discovery is the point here, not compilation
    try:
        assert "compile" in backends.available()
        report = run("compile", dtypes=["float32"], ops=["paged_attention", "rms_norm", "linear"],
                     families=["llama", "deepseek_v3"])
        assert report.passed, report.failures
        assert set(report.native_ops) == {"linear", "rms_norm", "rotary_embedding", "silu_and_mul",
                                          "paged_attention"}
        assert report.fallback_calls["model runs"]["write_kv"] > 0  # left to the reference, and counted
        assert report.backend_fallbacks.get("rms_norm", 0) > 0  # compilation off: its own count says so
        assert sys.modules["modelchip_compile"].__file__.startswith(str(site))
    finally:
        _forget_plugin()


@pytest.mark.skipif(not _setuptools_can_build(), reason="building the example offline needs setuptools>=77")
@pytest.mark.slow  # pip installs the plugin
def test_pip_installs_it_and_the_entry_point_finds_it(tmp_path, monkeypatch):
    source = shutil.copytree(EXAMPLE, tmp_path / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(site), str(source)],
                         capture_output=True, text=True, timeout=1800)  # hang guard
    if pip.returncode and "No module named pip" in pip.stderr:
        pytest.skip("pip is not available")
    assert pip.returncode == 0, pip.stderr
    assert list(site.glob("modelchip_compile_backend-*.dist-info/entry_points.txt"))
    _check_discovered(site, monkeypatch)


def test_entry_point_declared_in_pyproject_is_found(tmp_path, monkeypatch):
    # the installed layout, made by hand from the example's own pyproject.toml (no build tools needed)
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copytree(EXAMPLE / "src" / "modelchip_compile", tmp_path / "modelchip_compile")
    info = tmp_path / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = [f"{name} = {target}" for name, target in project["entry-points"]["modelchip.backends"].items()]
    (info / "entry_points.txt").write_text("[modelchip.backends]\n" + "\n".join(lines) + "\n")
    _check_discovered(tmp_path, monkeypatch)


@pytest.mark.slow  # the full op grid in every dtype, two families
def test_conformance_passes_without_the_compiler_in_every_dtype(plugin_source, monkeypatch, register):
    from modelchip_compile import CompileBackend

    monkeypatch.setenv("MODELCHIP_COMPILE", "0")
    report = run(register(CompileBackend), families=["qwen3", "step3_text"])
    assert report.passed, report.failures


def test_a_compile_failure_falls_back_per_op_with_a_warning(plugin_source, monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("InductorError: no working C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    from modelchip_compile import CompileBackend

    backend, ref = CompileBackend(compile=True, min_numel=0), ReferenceBackend()
    x, w = torch.randn(3, 16), torch.rand(16) + 0.5
    with pytest.warns(RuntimeWarning, match="torch.compile failed for rms_norm"):
        out = backend.rms_norm(x, w, 1e-6)
    torch.testing.assert_close(out, ref.rms_norm(x, w, 1e-6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls go straight to the eager path
        backend.rms_norm(x, w, 1e-6)
    assert backend.fallbacks == {"rms_norm": 2}
    with pytest.raises(ValueError):  # a bad input (odd width) raises its own error, and is no compile failure
        backend.silu_and_mul(torch.randn(3, 1))
    assert backend._ops["silu_and_mul"].compiled[torch.float32] is not None
    gate_up = torch.randn(4, 32)
    with pytest.warns(RuntimeWarning, match="silu_and_mul"):
        torch.testing.assert_close(backend.silu_and_mul(gate_up), ref.silu_and_mul(gate_up))


def test_small_inputs_skip_the_compiler(plugin_source):
    from modelchip_compile import CompileBackend

    backend = CompileBackend(compile=True)  # default threshold: decode-sized inputs run eagerly, uncounted
    backend.rms_norm(torch.randn(1, 576), torch.ones(576), 1e-5)
    assert backend.fallbacks == {} and backend._ops["rms_norm"].compiled == {}


@pytest.mark.slow  # compiles ~50 kernels (~50 s cold on 2 cores)
def test_compiled_kernels_pass_full_conformance(plugin_source, monkeypatch, register):
    from modelchip_compile import CompileBackend

    monkeypatch.setenv("MODELCHIP_COMPILE", "1")
    monkeypatch.setenv("MODELCHIP_COMPILE_MIN_NUMEL", "0")  # every shape through the compiled kernels
    report = run(register(CompileBackend))
    assert report.passed, report.failures
    assert report.backend_fallbacks == {}  # nothing fell back to eager: every kernel compiled
