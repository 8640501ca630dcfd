"""The tokenizer half of a GGUF: vocabulary, merges, token types, special ids and the chat template.

Everything is read from the Hugging Face tokenizer the model was trained with, so llama.cpp tokenizes
exactly like it did. llama.cpp does not read the pre-tokenizer regex from the file; it picks its own
implementation by name (``tokenizer.ggml.pre``). The name is therefore chosen by comparing the
tokenizer's split regex with the ones llama.cpp implements, and anything else is refused rather than
exported to tokenize differently.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackpropagateError

# The split regexes of llama.cpp's pre-tokenizers we map to (as written in tokenizer.json files).
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_BY_REGEX = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}
_SUPPORTED_PRE = "the GPT-2 byte-level regex, the Llama 3 split regex or the Qwen2 split regex"

# gguf token types (gguf.TokenType values)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class VocabInfo:
    """What the GGUF stores about the tokenizer, plus what the parity check and Modelfile need."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]  # bos/eos/unk/pad/eot -> id (only those that exist)
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    stop_ids: list[int] = field(default_factory=list)  # every end-of-turn/stop token id


def _pre_tokenizer_name(tokenizer_json: dict[str, Any], where: Path) -> str:
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise BackpropagateError(
            "INPUT_UNSUPPORTED_TOKENIZER",
            f"{where}: the tokenizer is a {model.get('type', '?')} model"
            f"{' with byte fallback (SentencePiece style)' if model.get('byte_fallback') else ''}; "
            "the GGUF export supports byte-level BPE tokenizers only.")
    normalizer = tokenizer_json.get("normalizer")
    if normalizer and normalizer.get("type") != "NFC":
        raise BackpropagateError("INPUT_UNSUPPORTED_TOKENIZER",
                                 f"{where}: the tokenizer normalizes text ({normalizer.get('type')}), "
                                 "which llama.cpp does not reproduce.")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex in _PRE_BY_REGEX and steps[0].get("behavior") == "Isolated":
            return _PRE_BY_REGEX[regex]
    raise BackpropagateError("INPUT_UNSUPPORTED_TOKENIZER",
                             f"{where}: the pre-tokenizer ({' + '.join(map(str, kinds))}) is not one llama.cpp "
                             f"implements; supported: {_SUPPORTED_PRE}.")


def _end_of_turn_token(tokenizer: Any, specials: list[str]) -> str | None:
    """The special token the chat template writes right after an assistant reply."""
    reply = "BACKPROP_END_OF_TURN_PROBE"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": reply}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses the probe just has no detectable marker
        return None
    end = text.rfind(reply)
    if end < 0:
        return None
    rest = text[end + len(reply):]
    for token in sorted(specials, key=len, reverse=True):
        if rest.startswith(token):
            return token
    return None


def _generation_stop_ids(model_dir: Path) -> list[int]:
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return []
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def stop_tokens(model_dir: Path, tokenizer: Any) -> dict[str, int]:
    """Every token that must end generation, in order: eos, the template's end-of-turn, generation_config's."""
    found: dict[str, int] = {}
    if tokenizer.eos_token_id is not None:
        found[tokenizer.eos_token] = int(tokenizer.eos_token_id)
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    eot = _end_of_turn_token(tokenizer, specials)
    if eot is not None:
        found.setdefault(eot, int(tokenizer.convert_tokens_to_ids(eot)))
    for token_id in _generation_stop_ids(model_dir):
        found.setdefault(tokenizer.convert_ids_to_tokens(token_id), token_id)
    return found


def _merges(model_dir: Path) -> list[str]:
    """The BPE merges in GGUF's "a b" form (gguf.SpecialVocab converts the newer pair format)."""
    import gguf

    quiet = logging.getLogger("gguf.vocab")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its bos/eos heuristics warn about things we read from transformers
    try:
        return list(gguf.SpecialVocab(model_dir, load_merges=True, special_token_types=()).merges)
    finally:
        quiet.setLevel(level)


def read_vocab(model_dir: Path, tokenizer: Any, n_vocab: int) -> VocabInfo:
    """Build the GGUF vocabulary of ``tokenizer`` for an embedding with ``n_vocab`` rows."""
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise BackpropagateError("INPUT_UNSUPPORTED_TOKENIZER",
                                 f"{model_dir} has no tokenizer.json (a fast tokenizer is required).")
    tokenizer_json = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    pre = _pre_tokenizer_name(tokenizer_json, tokenizer_file)
    vocab: dict[str, int] = tokenizer.get_vocab()
    if len(vocab) > n_vocab or max(vocab.values(), default=0) >= n_vocab:
        raise BackpropagateError(
            "STATE_VOCAB_MISMATCH",
            f"the tokenizer has {len(vocab)} tokens (highest id {max(vocab.values())}) but the model's "
            f"embedding has only {n_vocab} rows.")
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    by_id = {i: tok for tok, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    merges = _merges(model_dir)
    specials = [t.content for t in added.values() if t.special]
    special_ids: dict[str, int] = {}
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            special_ids[kind] = int(token_id)
    eot = _end_of_turn_token(tokenizer, specials)
    if eot is not None:
        special_ids["eot"] = int(vocab[eot])
    probe = tokenizer("a")["input_ids"]
    add_bos = "bos" in special_ids and bool(probe) and probe[0] == special_ids["bos"]
    add_eos = "eos" in special_ids and bool(probe) and probe[-1] == special_ids["eos"]
    stop_ids = [i for i in stop_tokens(model_dir, tokenizer).values() if i < n_vocab]
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return VocabInfo(tokens=tokens, token_types=types, merges=merges, pre=pre, special_ids=special_ids,
                     add_bos=add_bos, add_eos=add_eos, chat_template=template, stop_ids=stop_ids)


def add_vocab(writer: Any, info: VocabInfo) -> None:
    """Write the ``tokenizer.*`` keys."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(info.pre)
    writer.add_token_list(info.tokens)
    writer.add_token_types(info.token_types)
    writer.add_token_merges(info.merges)
    for kind, token_id in info.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(info.add_bos)
    writer.add_add_eos_token(info.add_eos)
    if info.chat_template:
        writer.add_chat_template(info.chat_template)
