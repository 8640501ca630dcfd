"""Which llama.cpp tokenizer reproduces a Hugging Face ``tokenizer.json``, or why none does.

llama.cpp does not run the pre-tokenizer or normalizer written in tokenizer.json: it picks its own
implementation by name (``tokenizer.ggml.model`` + ``tokenizer.ggml.pre``, and for SentencePiece-style
vocabularies ``tokenizer.ggml.add_space_prefix``). So the tokenizer's exact structure is matched against
the ones llama.cpp implements, and anything else is refused rather than exported to tokenize differently.

One layout is reproduced only in part: the Metaspace pre-tokenizer with ``prepend_scheme "first"`` that
transformers 5 writes for SentencePiece models (Mistral v0.3 as ``LlamaTokenizer`` saves it) puts "▁" before
the text that starts the input and before no text that follows a special token. llama.cpp with
``add_space_prefix`` false adds no "▁" anywhere, so it tokenizes every text after a special token exactly like
it, and differs only on text that starts the input without a space. That is exported
(:attr:`TokenizerKind.start_prefix_only`) when the chat template starts every conversation with a special
token (:func:`check_start_prefix`); raw text keeps that one difference (the parity check reports it).
The regexes below are the originals as tokenizer.json files write them (llama.cpp's llama-vocab.cpp
quotes each next to its own adapted version).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackpropagateError

_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
LLAMA3_REGEX = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_REGEX = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + "?"
               r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS + "?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# (split regex, model.ignore_merges) -> llama.cpp pre-tokenizer name. llama.cpp's "llama-bpe" skips the
# merges for words already in the vocabulary (ignore_merges), "smaug-bpe" has the same regex without that.
SPLIT_PRE: dict[tuple[str, bool], str] = {
    (LLAMA3_REGEX, True): "llama-bpe",
    (LLAMA3_REGEX, False): "smaug-bpe",
    (QWEN2_REGEX, False): "qwen2",
    (QWEN35_REGEX, False): "qwen35",
    (GPT4O_REGEX, False): "gpt-4o",
}
# Every tokenizer kind the export writes, by llama.cpp's name ("llama-spm": SentencePiece style, any normalizer
# layout accepted below); model presets name theirs this way.
SUPPORTED_KINDS = ("gpt-2", "smollm", *sorted(set(SPLIT_PRE.values())), "llama-spm")
SUPPORTED = ("byte-level BPE with the GPT-2 regex (gpt-2), individual digits + GPT-2 regex (smollm), or a "
             "Split regex of Llama 3 (llama-bpe), Qwen2 (qwen2), Qwen3.5 (qwen35) or GPT-4o/Phi-4 (gpt-4o); "
             "or SentencePiece-style BPE with byte fallback whose normalizer is Prepend('▁') + Replace(' ', '▁') "
             "(Llama 2, Mistral, Phi-3) or Replace(' ', '▁') alone (Gemma), or no normalizer and a Metaspace('▁', "
             "split=False) pre-tokenizer with prepend_scheme 'never', or 'first' under a chat template that starts "
             "with a special token (transformers 5's Mistral v0.3)")
_SPACE = "\u2581"


@dataclass(frozen=True)
class TokenizerKind:
    """How llama.cpp must be told to tokenize: ``model`` gpt2 (byte-level BPE) or llama (SentencePiece style)."""

    model: str
    pre: str
    add_space_prefix: bool | None = None  # only for model == "llama"
    # Metaspace "first": Hugging Face puts "▁" before the text that starts the input (unless it starts with a
    # space) and llama.cpp does not; everything after a special token is tokenized alike.
    start_prefix_only: bool = False


_HINT = ("Export --format merged and convert that folder with llama.cpp's own convert_hf_to_gguf.py, or fine-tune "
         "a model with a supported tokenizer.")
_START_HINT = ("Use a chat template that starts with a special token (Mistral's starts with {{ bos_token }}), or "
               + _HINT[0].lower() + _HINT[1:])


def _refuse(where: Path | str, what: str, hint: str = _HINT) -> BackpropagateError:
    return BackpropagateError("INPUT_UNSUPPORTED_TOKENIZER",
                              f"{where}: {what}, which llama.cpp does not reproduce; supported: {SUPPORTED}.",
                              hint=hint)


def _steps(node: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    if not node:
        return []
    return list(node.get(key, [])) if node.get("type") == "Sequence" else [node]


def _byte_level_ok(step: dict[str, Any], use_regex: bool) -> bool:
    return (step.get("type") == "ByteLevel" and not step.get("add_prefix_space", False)
            and bool(step.get("use_regex", True)) == use_regex)


def _byte_level_pre(tokenizer_json: dict[str, Any], where: Path | str) -> str:
    model = tokenizer_json["model"]
    normalizer = tokenizer_json.get("normalizer")
    # NFC is accepted as before: llama.cpp skips it, which only matters for text that is not NFC already.
    if normalizer and normalizer.get("type") != "NFC":
        raise _refuse(where, f"the byte-level tokenizer normalizes text ({normalizer.get('type')})")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("dropout"):
        raise _refuse(where, "the BPE model uses subword prefixes/suffixes or dropout")
    steps = _steps(tokenizer_json.get("pre_tokenizer"), "pretokenizers")
    kinds = [s.get("type") for s in steps]
    ignore_merges = bool(model.get("ignore_merges", False))
    if not ignore_merges and len(steps) == 1 and _byte_level_ok(steps[0], True):
        return "gpt-2"
    if (not ignore_merges and kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and _byte_level_ok(steps[1], True)):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and _byte_level_ok(steps[1], False):
        split = steps[0]
        regex = (split.get("pattern") or {}).get("Regex")
        name = SPLIT_PRE.get((regex, ignore_merges)) if isinstance(regex, str) else None
        if name and split.get("behavior") == "Isolated" and not split.get("invert"):
            return name
        raise _refuse(where, f"the split regex {regex!r} (ignore_merges={ignore_merges}) is not one llama.cpp has")
    raise _refuse(where, f"the pre-tokenizer is {' + '.join(map(str, kinds)) or 'none'}")


def _replace_space(step: dict[str, Any]) -> bool:
    return (step.get("type") == "Replace" and (step.get("pattern") or {}).get("String") == " "
            and step.get("content") == _SPACE)


def _metaspace_prefix(pre: dict[str, Any], norms: list[dict[str, Any]], where: Path | str) -> bool:
    """Metaspace with no normalizer: False for prepend_scheme "never", True for "first" (see the module doc)."""
    scheme = pre.get("prepend_scheme") or ("always" if pre.get("add_prefix_space", True) else "never")
    if norms or pre.get("replacement", _SPACE) != _SPACE or pre.get("split", True):
        raise _refuse(where, "the byte-fallback BPE's Metaspace pre-tokenizer comes with a normalizer, another "
                             "replacement than '▁' or split=True (BPE word by word, where llama.cpp runs it on the whole text)")
    if scheme == "always":
        raise _refuse(where, "the byte-fallback BPE's Metaspace pre-tokenizer (prepend_scheme 'always') puts '▁' before "
                             "text after a special token only when it does not start with a space, where llama.cpp "
                             "(add_space_prefix) puts one before every such text")
    if scheme not in ("first", "never"):
        raise _refuse(where, f"the byte-fallback BPE's Metaspace pre-tokenizer has prepend_scheme {scheme!r}")
    return scheme == "first"


def _spm_layout(tokenizer_json: dict[str, Any], where: Path | str) -> tuple[bool, bool]:
    """(add_space_prefix, start_prefix_only): (True, False) for Llama 2 / Mistral / Phi-3 (a "▁" before every
    text piece), (False, False) for Gemma and Metaspace "never" (none), (False, True) for Metaspace "first"."""
    norms = _steps(tokenizer_json.get("normalizer"), "normalizers")
    pre = tokenizer_json.get("pre_tokenizer")
    if pre and pre.get("type") == "Metaspace":
        return False, _metaspace_prefix(pre, norms, where)
    # Gemma's Split(" ") runs after every space became "▁", so it never splits anything.
    pre_noop = pre is None or (pre.get("type") == "Split" and (pre.get("pattern") or {}).get("String") == " "
                               and bool(norms) and _replace_space(norms[-1]))
    if pre_noop and len(norms) == 2 and norms[0] == {"type": "Prepend", "prepend": _SPACE} and _replace_space(norms[1]):
        return True, False
    if pre_noop and len(norms) == 1 and _replace_space(norms[0]):
        return False, False
    layout = [n.get("type") for n in norms] + [pre.get("type") if pre else None]
    raise _refuse(where, f"the SentencePiece-style BPE (byte fallback) has the normalizer/pre-tokenizer {layout}")


def check_start_prefix(renders: list[str] | None, added: list[str], where: Path | str) -> None:
    """For a Metaspace "first" tokenizer: every rendered chat (``renders``; None: no chat template) must start
    with an added token (``added``: their contents) or a space, after which llama.cpp tokenizes like it."""
    if not renders:
        raise _refuse(where, "the Metaspace pre-tokenizer (prepend_scheme 'first') puts '▁' before the text that "
                             "starts the input, where llama.cpp (add_space_prefix false, as text after special tokens "
                             "needs) puts none, and there is no chat template that starts with a special token",
                      _START_HINT)
    for text in renders:
        if not text.startswith(" ") and not any(text.startswith(token) for token in added if token):
            raise _refuse(where, f"the chat template starts a conversation with the text {text[:40]!r}, not a special "
                                 "token: the Metaspace pre-tokenizer (prepend_scheme 'first') puts '▁' before it, "
                                 "where llama.cpp (add_space_prefix false, as text after special tokens needs) does not",
                          _START_HINT)


def tokenizer_kind(tokenizer_json: dict[str, Any], where: Path | str = "tokenizer.json") -> TokenizerKind:
    """The llama.cpp tokenizer that reproduces ``tokenizer_json`` exactly; raises INPUT_UNSUPPORTED_TOKENIZER."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise _refuse(where, f"the tokenizer is a {model.get('type', 'unknown')} model")
    if model.get("byte_fallback"):
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("dropout"):
            raise _refuse(where, "the BPE model uses subword prefixes/suffixes or dropout")
        add_space_prefix, start_only = _spm_layout(tokenizer_json, where)
        return TokenizerKind("llama", "default", add_space_prefix, start_only)
    return TokenizerKind("gpt2", _byte_level_pre(tokenizer_json, where))
