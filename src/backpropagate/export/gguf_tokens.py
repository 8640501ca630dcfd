"""Token list, scores and types for both GGUF vocabulary kinds, laid out as llama.cpp's converter does.

For SentencePiece-style vocabularies (``tokenizer.ggml.model = "llama"``) llama.cpp merges the adjacent
pair whose joined text is the vocabulary entry with the highest *score*; Hugging Face's BPE merges the
pair with the lowest *merge rank*. Scores are therefore derived from tokenizer.json's merge list
(score = -rank of the first merge producing the token), which makes both merge in the same order; this
needs only tokenizer.json, not the original tokenizer.model. Bytes, control and user-defined tokens get
the converter's fixed scores (0 and -1000).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SPACE = "\u2581"
UNREACHABLE_SCORE = -1e9  # a multi-character entry no merge produces: merged last, as SentencePiece does
SPECIAL_SCORE = -1000.0


@dataclass
class TokenTable:
    """The three parallel lists a GGUF vocabulary stores (scores only for SentencePiece style)."""

    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None


def looks_special(text: str) -> bool:
    """Added tokens some models forget to flag special (``<|...|>``, Gemma's ``<unusedN>``/``<mask>``)."""
    return ((text.startswith("<|") and text.endswith("|>")) or (text.startswith("<unused") and text.endswith(">"))
            or text in ("<pad>", "<mask>"))


def merge_pairs(raw: list[Any]) -> list[tuple[str, str]]:
    """tokenizer.json merges in either format ("a b" strings or [a, b] pairs)."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in raw]  # type: ignore[misc]


def _merge_scores(tokenizer_json: dict[str, Any]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for rank, (left, right) in enumerate(merge_pairs(tokenizer_json["model"].get("merges", []))):
        scores.setdefault(left + right, -float(rank))
    return scores


def _added_entry(added: Any, spm: bool) -> tuple[str, int]:
    import gguf

    if added.special or looks_special(added.content):
        return added.content, int(gguf.TokenType.CONTROL)
    # llama.cpp matches user-defined tokens in the raw text, before spaces become "▁"
    return (added.content.replace(_SPACE, " ") if spm else added.content), int(gguf.TokenType.USER_DEFINED)


def token_table(tokenizer: Any, tokenizer_json: dict[str, Any], n_vocab: int, spm: bool) -> TokenTable:
    """Every id below ``n_vocab``: missing ids become ``[PADi]`` (UNUSED), as llama.cpp's converter writes."""
    import gguf

    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    merged = _merge_scores(tokenizer_json) if spm else {}
    unk_id = tokenizer.unk_token_id
    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
    for i in range(n_vocab):
        score = 0.0
        if i not in by_id:
            text, kind, score = f"[PAD{i}]", int(gguf.TokenType.UNUSED), SPECIAL_SCORE
        elif i in added:
            (text, kind), score = _added_entry(added[i], spm), SPECIAL_SCORE
        elif spm and _BYTE_TOKEN.fullmatch(by_id[i]):
            text, kind = by_id[i], int(gguf.TokenType.BYTE)
        elif spm and i == unk_id:
            text, kind = by_id[i], int(gguf.TokenType.UNKNOWN)
        else:
            text, kind = by_id[i], int(gguf.TokenType.NORMAL)
            if spm and len(text) > 1:
                score = merged.get(text, UNREACHABLE_SCORE)
        tokens.append(text)
        types.append(kind)
        scores.append(score)
    return TokenTable(tokens=tokens, token_types=types, scores=scores if spm else None)
