"""Text <-> token ids and chat templates, from an HF tokenizer directory or from a GGUF file's metadata.

Built on the `tokenizers` library only. A GGUF carries no tokenizer.json, so `from_gguf` rebuilds the pipeline
the same way transformers does for the same file (byte-level BPE for `gpt2`, SentencePiece-style BPE with byte
fallback for `llama`), because transformers is what users compare against.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from modelchip.errors import ModelchipError

# llama.cpp token types (tokenizer.ggml.token_type)
CONTROL, USER_DEFINED = 3, 4

# Pre-tokenizer splits keyed by tokenizer.ggml.pre, as transformers applies them; any other value keeps GPT-2's.
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"], _LLAMA3),
    "tekken": _TEKKEN,
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], _QWEN2),
    "qwen35": _QWEN35,
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O),
}
# SentencePiece vocabularies of these architectures need respelled tokens or a different prefix rule.
_SPM_SPECIAL_ARCHS = ("gemma", "gemma2", "gemma3", "phi3")


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet byte-level vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def generate_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two known pieces, best score
    first (the order transformers derives them in)."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


class Tokenizer:
    """encode/decode with the model's special tokens, and its chat template rendered in a jinja2 sandbox."""

    def __init__(self, backend: Backend, *, special: dict[str, str | None], eos_token_ids: set[int],
                 chat_template: str | None, add_bos_token: bool | None = None, add_eos_token: bool | None = None):
        self.backend = backend
        self.special = special  # bos_token, eos_token, unk_token, pad_token -> text (or None)
        self.chat_template = chat_template
        added = {t.content for t in backend.get_added_tokens_decoder().values()}
        missing = [t for t in special.values() if t is not None and t not in added]
        if missing:  # transformers makes every named special token an added token, matched whole and skippable
            backend.add_special_tokens([AddedToken(t, special=True) for t in dict.fromkeys(missing)])
        # Explicit flags (or no post-processor at all) replace the post-processor, as transformers does.
        if add_bos_token is not None or add_eos_token is not None or backend.post_processor is None:
            bos = special.get("bos_token") if add_bos_token else None
            eos = special.get("eos_token") if add_eos_token else None
            single = " ".join([f"{bos}:0"] * bool(bos) + ["$A:0"] + [f"{eos}:0"] * bool(eos))
            pair = single + " " + " ".join([f"{bos}:1"] * bool(bos) + ["$B:1"] + [f"{eos}:1"] * bool(eos))
            backend.post_processor = processors.TemplateProcessing(
                single=single, pair=pair, special_tokens=[(t, backend.token_to_id(t)) for t in (bos, eos) if t])
        self.bos_token_id = self._id(special.get("bos_token"))
        eos_id = self._id(special.get("eos_token"))
        self.eos_token_ids: set[int] = set(eos_token_ids) | ({eos_id} if eos_id is not None else set())
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token(self) -> str | None:
        return self.special.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special.get("eos_token")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, **kwargs: Any) -> str:
        """The prompt for `messages` (HF's message dicts; `tools` as OpenAI/HF function definitions)."""
        if not self.chat_template:
            raise ModelchipError("this model has no chat template; pass a plain prompt (or token ids) instead")
        try:
            return _compile(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt, tools=tools, documents=None,
                **{k: v for k, v in self.special.items() if v is not None}, **kwargs)
        except _jinja_errors() as exc:
            raise ModelchipError(f"the chat template failed on these messages: {exc}") from exc

    # -- constructors -----------------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """tokenizer.json + tokenizer_config.json (+ chat_template.jinja/.json, generation_config.json)."""
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise ModelchipError(f"{path} has no tokenizer.json")
        try:
            backend = Backend.from_file(str(file))
        except Exception as exc:  # the Rust side raises a bare Exception on bad JSON or unknown components
            raise ModelchipError(f"{file} is not a readable tokenizer.json: {exc}") from exc
        config = _read_json(path / "tokenizer_config.json")
        special = {name: _token_text(config.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
        template = config.get("chat_template")
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        elif (path / "chat_template.json").is_file():
            template = _read_json(path / "chat_template.json").get("chat_template", template)
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        eos = _read_json(path / "generation_config.json").get("eos_token_id")
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        # tokenizer.json's post-processor decides BOS/EOS (transformers 5 drops the config flags when it exists);
        # the flags only speak when the file has none
        flags = {} if backend.post_processor is not None else \
            {"add_bos_token": config.get("add_bos_token"), "add_eos_token": config.get("add_eos_token")}
        return cls(backend, special=special, eos_token_ids=eos_ids, chat_template=template, **flags)

    @classmethod
    def from_gguf(cls, fields: dict[str, Any]) -> Tokenizer:
        """From GGUF metadata as plain values (key -> str/int/float/bool/list), e.g. `GGUFCheckpoint.metadata`."""
        kind = fields.get("tokenizer.ggml.model")
        tokens = fields.get("tokenizer.ggml.tokens")
        if kind is None or not tokens:
            raise ModelchipError("the GGUF metadata has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens)")
        arch = fields.get("general.architecture")
        if kind == "gpt2":
            backend = _byte_level(fields)
        elif kind == "llama" and arch not in _SPM_SPECIAL_ARCHS:
            backend = _sentencepiece(fields)
        else:
            what = f"{kind!r} (architecture {arch!r})" if kind == "llama" else repr(kind)
            raise ModelchipError(f"GGUF tokenizer model {what} is not supported; supported: 'gpt2' (byte-level BPE) "
                                 "and 'llama' (SentencePiece BPE)")
        split = SPLITS.get(fields.get("tokenizer.ggml.pre"))
        if split is not None:
            backend.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        types = fields.get("tokenizer.ggml.token_type") or []
        alphabet = set(bytes_to_unicode().values()) if kind == "gpt2" else None
        # Control tokens stay whole and are skipped on decode; in a byte-level vocabulary one spelled outside the
        # byte alphabet is a llama.cpp mislabel, which transformers leaves out, and so do we.
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                    for t, ty in zip(tokens, types, strict=False)
                                    if ty == CONTROL and (alphabet is None or set(t) <= alphabet)])
        vocab = backend.get_vocab(with_added_tokens=False)
        backend.add_tokens([AddedToken(t, normalized=False, special=False)
                            for t, ty in zip(tokens, types, strict=False) if ty == USER_DEFINED and t in vocab])

        def token(key: str) -> str | None:
            i = fields.get(f"tokenizer.ggml.{key}")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        special = {"bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
                   "unk_token": token("unknown_token_id"), "pad_token": token("padding_token_id")}
        # llama.cpp also stops on end-of-turn / end-of-message tokens
        eos_ids = {fields[k] for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if k in fields}
        # SentencePiece files without the flag get BOS, as in llama.cpp and transformers
        add_bos = fields.get("tokenizer.ggml.add_bos_token", kind == "llama")
        return cls(backend, special=special, eos_token_ids=eos_ids, chat_template=fields.get("tokenizer.chat_template"),
                   add_bos_token=bool(add_bos), add_eos_token=bool(fields.get("tokenizer.ggml.add_eos_token", False)))


def _merges(fields: dict[str, Any], vocab: dict[str, int]) -> list[tuple[str, str]]:
    merges = fields.get("tokenizer.ggml.merges")
    if merges is not None:
        return [tuple(m.split(" ", 1)) for m in merges]
    scores = fields.get("tokenizer.ggml.scores")
    if scores is None:
        raise ModelchipError("the GGUF tokenizer has neither merges nor scores to derive them from")
    return generate_merges(vocab, dict(zip(fields["tokenizer.ggml.tokens"], scores, strict=False)))


def _byte_level(fields: dict[str, Any]) -> Backend:
    spell = bytes_to_unicode()
    alphabet = set(spell.values())
    # a token written in plain text (outside the byte alphabet) is respelled so it can ever be produced
    vocab = {t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(fields["tokenizer.ggml.tokens"])}
    backend = Backend(BPE(vocab=vocab, merges=_merges(fields, vocab), dropout=None, continuing_subword_prefix="",
                          end_of_word_suffix="", fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece(fields: dict[str, Any]) -> Backend:
    vocab = {t: i for i, t in enumerate(fields["tokenizer.ggml.tokens"])}
    backend = Backend(BPE(vocab=vocab, merges=_merges(fields, vocab), fuse_unk=True, byte_fallback=True, dropout=None))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(content=" ", left=1)])
    return backend


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelchipError(f"{file} is not valid JSON: {exc}") from exc


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value  # AddedToken serialised as a dict


def _jinja_errors() -> tuple[type[Exception], ...]:
    import jinja2

    return (jinja2.TemplateError,)


@cache
def _compile(template: str):
    """The template compiled the way transformers compiles chat templates (sandboxed, same globals/filters)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson HTML-escapes, which would change the prompt
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Generation(jinja2.ext.Extension):
        # {% generation %} marks assistant text for training masks in transformers; rendering just keeps the body
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ModelchipError(f"the model's chat template is not valid jinja: {exc}") from exc
