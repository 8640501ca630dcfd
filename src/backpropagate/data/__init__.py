"""Data pipeline: load rows -> detect format -> render with the model's template -> label -> pack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .formats import FORMATS, Conversation, FormatReport, detect_format, to_examples
from .load import dataset_fingerprint, load_rows
from .packing import PackingPlan, collate, forward_packed, pack
from .templates import IGNORE_INDEX, TokenizedSample, render, tokenize_conversation, tokenize_examples

__all__ = [
    "FORMATS", "IGNORE_INDEX", "Conversation", "FormatReport", "LoadedData", "PackingPlan",
    "TokenizedSample", "collate", "dataset_fingerprint", "detect_format", "forward_packed", "load_rows",
    "load_examples", "pack", "render", "to_examples", "tokenize_conversation", "tokenize_examples",
]


@dataclass(frozen=True)
class LoadedData:
    """Examples in the normalized format, before any tokenizer is involved."""

    examples: list[Conversation | str]
    report: FormatReport
    fingerprint: str


def load_examples(source: Any, *, require_assistant: bool = True, format: str | None = None,
                  text_column: str | None = None) -> LoadedData:
    """Load, detect and normalize a dataset; cheap, so bad data fails before a model is loaded."""
    rows = load_rows(source)
    report = detect_format(rows, format=format, text_column=text_column)
    examples = to_examples(rows, report, text_column=text_column, require_assistant=require_assistant)
    return LoadedData(examples=examples, report=report, fingerprint=dataset_fingerprint(source))
