"""Run-time CPU dispatch: the kernels' choice of instruction set against what Linux says the CPU has, every copy
of the loops against eager PyTorch, the bfloat16 matmul offered wherever AVX512-BF16 is, and the default
backend and dtype `LLM` picks (and says) when the caller names neither."""

import platform
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from modelchip.errors import ModelchipError  # noqa: E402
from modelchip.runtime.backends import cpu, defaults  # noqa: E402

X86_LINUX = platform.machine().lower() in ("x86_64", "amd64") and Path("/proc/cpuinfo").is_file()


def _linux_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not X86_LINUX, reason="compares CPUID with Linux's /proc/cpuinfo flags on x86")
def test_kernels_pick_the_widest_copy_linux_lists(kernels):
    flags = _linux_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "bmi2"} <= flags:
        want = "avx512"
    elif {"avx2", "fma", "bmi2"} <= flags:
        want = "avx2"
    else:
        want = "baseline"
    assert kernels.best_isa == want and kernels.isa() == want
    assert kernels.has_linear_bf16 == ("avx512_bf16" in flags and "avx512f" in flags)
    # AMX also needs Linux's permission for the tile data, which every kernel since 5.16 grants where it lists them
    assert kernels.has_linear_bf16_amx == (kernels.has_linear_bf16 and {"amx_tile", "amx_bf16"} <= flags)


def test_set_isa_refuses_what_it_cannot_run(kernels):
    with pytest.raises(RuntimeError, match="unknown instruction set 'sse9'"):
        kernels.set_isa("sse9")
    if kernels.best_isa != "avx512":
        with pytest.raises(RuntimeError, match="runs .* at most, not avx512"):
            kernels.set_isa("avx512")
    assert kernels.isa() == kernels.best_isa


@pytest.mark.parametrize(("has_pairs", "forced", "want"), [
    (True, "", "bf16-pairs"),        # AMX or not: on AMX CPUs the pairs run through its tiles (bf16_amx)
    (False, "", "onednn"),
    (True, "onednn", "onednn"),
])
def test_bf16_matmul_choice(monkeypatch, has_pairs, forced, want):
    class Kernels:
        has_linear_bf16 = has_pairs

    monkeypatch.setenv("MODELCHIP_BF16_MATMUL", forced)
    assert cpu.bf16_matmul(Kernels) == want


@pytest.mark.parametrize(("has_amx", "setting", "want"), [
    (True, "", True), (True, "1", True), (True, "0", False), (False, "", False), (False, "0", False)])
def test_bf16_amx_choice(monkeypatch, has_amx, setting, want):
    class Kernels:
        has_linear_bf16_amx = has_amx
        chosen = None

        @classmethod
        def set_linear_bf16_amx(cls, on):
            cls.chosen = on

    monkeypatch.setenv("MODELCHIP_BF16_AMX", setting)
    assert cpu.bf16_amx(Kernels) == want
    assert Kernels.chosen == (want if has_amx else None)  # the kernels are told only where they have a choice


@pytest.mark.parametrize(("choose", "variable", "unavailable", "cannot", "unknown", "choices"), [
    (cpu.bf16_amx, "MODELCHIP_BF16_AMX", "1", "gives no AMX tiles", "yes", "set 0"),
    (cpu.bf16_matmul, "MODELCHIP_BF16_MATMUL", "pairs", "cannot run here", "amx", "choose pairs or onednn"),
])
def test_bf16_overrides_refuse_what_cannot_run(monkeypatch, choose, variable, unavailable, cannot, unknown, choices):
    class Kernels:  # neither the pair-blocked matmul nor AMX tiles
        has_linear_bf16 = False
        has_linear_bf16_amx = False

    monkeypatch.setenv(variable, unavailable)
    with pytest.raises(ModelchipError, match=cannot):
        choose(Kernels)
    monkeypatch.setenv(variable, unknown)
    with pytest.raises(ModelchipError, match=choices):
        choose(Kernels)
    monkeypatch.setenv("MODELCHIP_BF16_MATMUL", "amx")
    with pytest.raises(ModelchipError, match="choose pairs or onednn"):
        cpu.bf16_matmul(Kernels)


@pytest.mark.parametrize(("avx512_bf16", "amx", "want"), [
    (True, False, ("cpu", "bfloat16")), (False, True, ("cpu", "bfloat16")), (False, False, ("cpu", "float32"))])
def test_default_on_a_cpu_is_the_cpu_backend_in_the_fastest_dtype(monkeypatch, avx512_bf16, amx, want):
    monkeypatch.setattr(defaults, "has_avx512_bf16", lambda: avx512_bf16)
    monkeypatch.setattr(defaults, "has_amx_bf16", lambda: amx)
    backend, dtype, why = defaults.default_backend_and_dtype("cpu")
    assert (backend, dtype) == want
    assert why.startswith(f"modelchip: cpu backend, {want[1]} on cpu (") and "\n" not in why


def test_default_keeps_what_the_caller_gave(monkeypatch):
    monkeypatch.setattr(defaults, "has_avx512_bf16", lambda: True)
    assert defaults.default_backend_and_dtype("cpu", backend="reference")[:2] == ("reference", "float32")
    assert defaults.default_backend_and_dtype("cpu", dtype="float16")[:2] == ("cpu", "float16")
    assert defaults.default_backend_and_dtype("meta")[:2] == ("reference", "float32")


def test_llm_without_backend_or_dtype_runs_the_default_and_says_so(hf_checkpoint, capsys):
    from modelchip import LLM

    backend, dtype, _ = defaults.default_backend_and_dtype("cpu")
    llm = LLM(str(hf_checkpoint("llama").path))
    err = capsys.readouterr().err
    assert llm.ops.name == backend == "cpu" and llm.dtype == getattr(torch, dtype)
    assert len([line for line in err.splitlines() if line.startswith("modelchip: cpu backend")]) == 1
    LLM(str(hf_checkpoint("llama").path), backend="reference", dtype="float32")
    assert "modelchip: " not in capsys.readouterr().err  # nothing to say when the caller chose
