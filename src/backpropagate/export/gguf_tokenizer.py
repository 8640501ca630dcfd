"""The tokenizer half of a GGUF: vocabulary, scores, merges, token types, special ids and the chat template.

Everything is read from the Hugging Face tokenizer the model was trained with, so llama.cpp tokenizes
exactly like it did. Two kinds are exported: byte-level BPE (``tokenizer.ggml.model = "gpt2"``: GPT-2,
SmolLM, Llama 3, Qwen2/3/3.5, Phi-4) and SentencePiece-style BPE with byte fallback (``"llama"``: Llama 2,
Mistral, Phi-3, Gemma). :mod:`.gguf_vocab_kind` decides which llama.cpp tokenizer reproduces the
tokenizer.json exactly and refuses the rest; :func:`check_tokenizer` runs that decision before training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackpropagateError
from ..logs import get_logger
from .gguf_tokens import token_table
from .gguf_vocab_kind import SUPPORTED_KINDS, TokenizerKind, check_start_prefix, tokenizer_kind

# llama.cpp right-strips every added token except these when general.name contains "phi3"/"phi-3",
# exactly what Microsoft's Phi-3 tokenizers flag (rstrip) in tokenizer.json; no other strip layout is reproduced.
PHI3_UNSTRIPPED = ("<unk>", "<s>", "<|endoftext|>")
PHI3_REQUIRED = (*PHI3_UNSTRIPPED, "</s>")
# Conversations whose rendering must start with a special token for a Metaspace "first" tokenizer.
_START_PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
)


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
    model: str = "gpt2"  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece style)
    scores: list[float] | None = None  # only for model == "llama"
    add_space_prefix: bool | None = None  # only for model == "llama"
    start_prefix_only: bool = False  # see TokenizerKind: raw text at the start of the input differs
    # "phi3": general.name must contain "phi3" so llama.cpp right-strips added tokens like the tokenizer does
    strip_rule: str | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackpropagateError("INPUT_UNSUPPORTED_TOKENIZER", f"cannot read {path}: {exc}") from exc


def strip_rule(added_tokens: list[dict[str, Any]], where: Path | str = "tokenizer.json") -> str | None:
    """None when no added token strips spaces, "phi3" for Phi-3's layout; anything else is refused."""
    flagged = [a for a in added_tokens if a.get("lstrip") or a.get("rstrip") or a.get("single_word")]
    if not flagged:
        return None
    contents = {a["content"] for a in added_tokens}
    phi3 = all(not a.get("lstrip") and not a.get("single_word")
               and bool(a.get("rstrip")) == (a["content"] not in PHI3_UNSTRIPPED) for a in added_tokens)
    if phi3 and all(t in contents for t in PHI3_REQUIRED):
        return "phi3"
    names = ", ".join(repr(a["content"]) for a in flagged[:5])
    raise BackpropagateError(
        "INPUT_UNSUPPORTED_TOKENIZER",
        f"{where}: added tokens strip surrounding spaces ({names}), which llama.cpp reproduces only for "
        "Phi-3's exact layout.",
        hint="Export --format merged and convert that folder with llama.cpp's convert_hf_to_gguf.py.")


def check_tokenizer_kind(kind: str) -> str | None:
    """None when the export handles the tokenizer llama.cpp calls ``kind`` (a preset's pinned kind), else why not."""
    if kind in SUPPORTED_KINDS:
        return None
    return (f"the {kind or 'unknown'} tokenizer cannot be exported to GGUF by backpropagate "
            f"(supported: {', '.join(SUPPORTED_KINDS)})")


def _rendered_starts(tokenizer: Any) -> list[str] | None:
    """How the chat template starts the probe conversations (those it renders); None without a template."""
    if not isinstance(getattr(tokenizer, "chat_template", None), str):
        return None
    renders = []
    for messages in _START_PROBES:
        try:
            renders.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception:  # noqa: BLE001 - a template may refuse a system turn; the others still count
            continue
    return renders or None


def check_start(kind: TokenizerKind, tokenizer: Any, where: Path | str) -> None:
    """Refuse a Metaspace "first" tokenizer whose chat template starts with plain text (see gguf_vocab_kind)."""
    if not kind.start_prefix_only:
        return
    if tokenizer is None:  # tokenizer.json content alone: no chat template to check
        check_start_prefix(None, [], where)
        return
    added = [t.content for t in tokenizer.added_tokens_decoder.values()]
    check_start_prefix(_rendered_starts(tokenizer), added, where)


def check_tokenizer(source: str | Path | dict[str, Any]) -> str | None:
    """None when the tokenizer can be exported to GGUF, else the reason; cheap: reads tokenizer.json, and loads
    the tokenizer only for a byte-fallback BPE whose class may replace the file's layout (:func:`loaded_layout`)
    or whose chat template must be checked (Metaspace "first").

    ``source`` is a model/tokenizer folder, a tokenizer.json path or its parsed content.
    """
    where: Path | str = "tokenizer.json"
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            return f"{path} does not exist (a fast tokenizer with tokenizer.json is required)"
        where = path
        try:
            data = _read_json(path)
        except BackpropagateError as exc:
            return exc.message
    try:
        loaded = _load_tokenizer(where) if isinstance(where, Path) and _layout_replaced(where, data) else None
        kind = tokenizer_kind(loaded_layout(data, loaded), where)
        strip_rule(data.get("added_tokens", []), where)
        if kind.start_prefix_only and loaded is None and isinstance(where, Path):
            loaded = _load_tokenizer(where)
        check_start(kind, loaded, where)
    except BackpropagateError as exc:
        return exc.message
    return None


def _layout_replaced(tokenizer_file: Path, data: dict[str, Any]) -> bool:
    """Whether transformers may run another normalizer/pre-tokenizer than the file's: a byte-fallback BPE
    loaded by a model-specific class (see :func:`loaded_layout`), not the generic one that runs the file as is."""
    if not (data.get("model") or {}).get("byte_fallback"):
        return False
    config = tokenizer_file.parent / "tokenizer_config.json"
    try:
        name = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") if config.is_file() else None
    except (OSError, ValueError):
        return False
    return name not in (None, "TokenizersBackend", "PreTrainedTokenizerFast")


def _load_tokenizer(tokenizer_file: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer_file.parent)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises, the folder is not usable
        raise BackpropagateError("INPUT_UNSUPPORTED_TOKENIZER",
                                 f"cannot load the tokenizer in {tokenizer_file.parent}: {exc}") from exc


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


def _special_ids(tokenizer: Any) -> dict[str, int]:
    found: dict[str, int] = {}
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            found[kind] = int(token_id)
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    eot = _end_of_turn_token(tokenizer, specials)
    if eot is not None:
        found["eot"] = int(tokenizer.convert_tokens_to_ids(eot))
    return found


def _check_fits(tokenizer: Any, n_vocab: int) -> None:
    """Every token must have an embedding row, except special added tokens past the end (Gemma 3's
    ``<image_soft_token>`` on the text model), which llama.cpp's converter drops too. An ordinary token
    without a row (words added to the tokenizer, embeddings not resized) is a mismatch."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    added = tokenizer.added_tokens_decoder
    beyond = sorted(i for i in vocab.values() if i >= n_vocab)
    if any(i not in added or not added[i].special for i in beyond):
        raise BackpropagateError(
            "STATE_VOCAB_MISMATCH",
            f"the tokenizer has {len(vocab)} tokens (highest id {max(vocab.values())}) but the model's "
            f"embedding has only {n_vocab} rows.")
    if beyond:
        names = [added[i].content for i in beyond]
        get_logger().warning("gguf_tokens_dropped", count=len(beyond), tokens=", ".join(names[:5]),
                             reason="added tokens past the embedding; the model can neither read nor emit them")


def loaded_layout(tokenizer_json: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """For byte-fallback BPE, the normalizer and pre-tokenizer transformers runs: its LlamaTokenizer (5.x) puts
    Metaspace("first") in place of the file's Prepend + Replace (Mistral's own tokenizer.json) on load."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer is not None else None
    if backend is None or not (tokenizer_json.get("model") or {}).get("byte_fallback"):
        return tokenizer_json
    loaded = json.loads(backend.to_str())
    return {**tokenizer_json, "normalizer": loaded.get("normalizer"), "pre_tokenizer": loaded.get("pre_tokenizer")}


def read_vocab(model_dir: Path, tokenizer: Any, n_vocab: int) -> VocabInfo:
    """Build the GGUF vocabulary of ``tokenizer`` for an embedding with ``n_vocab`` rows."""
    model_dir = Path(model_dir)
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise BackpropagateError("INPUT_UNSUPPORTED_TOKENIZER",
                                 f"{model_dir} has no tokenizer.json (a fast tokenizer is required).")
    tokenizer_json = _read_json(tokenizer_file)
    kind = tokenizer_kind(loaded_layout(tokenizer_json, tokenizer), tokenizer_file)
    rule = strip_rule(tokenizer_json.get("added_tokens", []), tokenizer_file)
    check_start(kind, tokenizer, tokenizer_file)
    _check_fits(tokenizer, n_vocab)
    spm = kind.model == "llama"
    table = token_table(tokenizer, tokenizer_json, n_vocab, spm)
    special_ids = _special_ids(tokenizer)
    probe = tokenizer("a")["input_ids"]
    add_bos = "bos" in special_ids and bool(probe) and probe[0] == special_ids["bos"]
    add_eos = "eos" in special_ids and bool(probe) and probe[-1] == special_ids["eos"]
    stop_ids = [i for i in stop_tokens(model_dir, tokenizer).values() if i < n_vocab]
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return VocabInfo(tokens=table.tokens, token_types=table.token_types, merges=[] if spm else _merges(model_dir),
                     pre=kind.pre, special_ids=special_ids, add_bos=add_bos, add_eos=add_eos,
                     chat_template=template, stop_ids=stop_ids, model=kind.model, scores=table.scores,
                     add_space_prefix=kind.add_space_prefix, start_prefix_only=kind.start_prefix_only,
                     strip_rule=rule)


def add_vocab(writer: Any, info: VocabInfo) -> None:
    """Write the ``tokenizer.*`` keys (general.name is the caller's: see :attr:`VocabInfo.strip_rule`)."""
    writer.add_tokenizer_model(info.model)
    writer.add_tokenizer_pre(info.pre)
    writer.add_token_list(info.tokens)
    if info.scores is not None:
        writer.add_token_scores(info.scores)
    writer.add_token_types(info.token_types)
    if info.merges:
        writer.add_token_merges(info.merges)
    for kind, token_id in info.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(info.add_bos)
    writer.add_add_eos_token(info.add_eos)
    if info.add_space_prefix is not None:
        writer.add_add_space_prefix(info.add_space_prefix)
    if info.chat_template:
        writer.add_chat_template(info.chat_template)
