"""The command line as users and checks call it: the JSON contract, tables, errors and --help."""

import json
import subprocess
import sys

import pytest

from modelchip.cli.main import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelchip", *args], capture_output=True, text=True,
                          timeout=1800)  # hang guard, not a speed check


def test_compare_json_contract():
    p = run("compare", "--models", "step3", "deepseek-v3", "--chips", "h800", "h20", "--context", "8192", "32768",
            "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["rows"]) == 4
    for row in out["rows"]:
        for key in ("model", "context", "kv_bytes", "attention_flops", "linear_flops", "ffn_flops",
                    "arithmetic_intensity", "cost", "best"):
            assert key in row
        assert set(row["cost"]) == {"h800", "h20"}
        assert set(row["cost"]["h800"]) >= {"attention", "ffn"}
        assert set(row["best"]) >= {"attention_chip", "ffn_chip", "total"}
        assert row["best"]["total"] == pytest.approx(
            row["cost"][row["best"]["attention_chip"]]["attention"] + row["cost"][row["best"]["ffn_chip"]]["ffn"])
    step3_8k = next(r for r in out["rows"] if r["model"] == "step3" and r["context"] == 8192)
    assert step3_8k["kv_bytes"] == 61 * 512 * 8192


def test_compare_json_writes_no_report_unless_asked(tmp_path):
    p = subprocess.run([sys.executable, "-m", "modelchip", "compare", "--models", "step3", "--json"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and not list(tmp_path.iterdir())


def test_compare_tables_and_report(tmp_path):
    out = tmp_path / "r.html"
    p = run("compare", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "USD per 1M decoded tokens at context 8192" in p.stdout
    assert "step3" in p.stdout and str(out.resolve()) in p.stdout
    assert out.read_text().startswith("<!doctype html>")


def test_compare_what_if_and_dtypes():
    base = json.loads(run("compare", "--models", "step3", "--chips", "h800", "--context", "8K", "--json").stdout)
    gqa8 = json.loads(run("compare", "--models", "step3", "--chips", "h800", "--context", "8K",
                          "--set", "num_key_value_heads=8", "--json").stdout)
    bf16 = json.loads(run("compare", "--models", "step3", "--chips", "h800", "--context", "8K",
                          "--kv-dtype", "bf16", "--json").stdout)
    assert gqa8["rows"][0]["kv_bytes"] == 8 * base["rows"][0]["kv_bytes"]
    assert bf16["rows"][0]["kv_bytes"] == 2 * base["rows"][0]["kv_bytes"]


def test_price_override_scales_cost():
    a = json.loads(run("compare", "--models", "step3", "--chips", "h20", "--context", "8K", "--json").stdout)
    b = json.loads(run("compare", "--models", "step3", "--chips", "h20", "--context", "8K", "--price", "h20=1.6",
                       "--json").stdout)
    assert b["rows"][0]["cost"]["h20"]["ffn"] == pytest.approx(2 * a["rows"][0]["cost"]["h20"]["ffn"])


def test_unpriced_chip_is_reported_not_guessed():
    out = json.loads(run("compare", "--models", "step3", "--chips", "h800", "metax-c550", "--context", "8K",
                         "--json").stdout)
    assert "metax-c550" not in out["rows"][0]["cost"]
    assert "no price" in out["chips"]["metax-c550"]["unpriced"]


@pytest.mark.parametrize("args,message", [
    (["compare", "--models", "stepp3"], "did you mean step3"),
    (["compare", "--chips", "h801"], "did you mean h800"),
    (["compare", "--context", "0"], "context must be positive"),
    (["compare", "--context=-8K"], "context must be positive"),
    (["compare", "--context", "lots"], "not a token count"),
    (["compare", "--set", "num_layerz=3"], "no such field"),
    (["compare", "--kv-dtype", "fp7"], "unknown dtype"),
    (["models", "nope-model"], "unknown model"),
    (["chips", "h8000"], "did you mean"),
])
def test_errors_are_clear(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unsupported_model_type_via_cli(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["compare", "--models", str(tmp_path)]) == 2
    assert "supported:" in capsys.readouterr().err


def test_chips_listing(capsys):
    assert main(["chips"]) == 0
    out = capsys.readouterr().out
    assert "ascend-910b" in out and "UNVERIFIED" in out
    assert main(["chips", "--json"]) == 0
    chips = json.loads(capsys.readouterr().out)
    h800 = next(c for c in chips if c["id"] == "h800")
    assert h800["figures"]["flops.fp8"]["tag"] == "P"
    assert main(["chips", "--systems"]) == 0
    assert "cloudmatrix-384" in capsys.readouterr().out
    assert main(["chips", "h800"]) == 0
    assert "Step-3" in capsys.readouterr().out


def test_models_listing_and_detail(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "step3" in out and "minimax-m1" in out
    assert main(["models", "step3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kv_bytes_per_token_fp8"] == 31232 and d["layers"] == 61


@pytest.mark.parametrize("command", ["compare", "chips", "models", "kv"])
def test_help(command):
    p = run(command, "--help")
    assert p.returncode == 0 and "usage:" in p.stdout
