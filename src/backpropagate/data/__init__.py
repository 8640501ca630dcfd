"""Data pipeline: load rows -> detect format -> render with the model's template -> label -> pack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .formats import FORMATS, Conversation, FormatReport, detect_format, to_examples
from .load import dataset_fingerprint, load_rows, read_rows
from .templates import IGNORE_INDEX, TokenizedSample, render, tokenize_conversation, tokenize_examples

__all__ = [
    "FORMATS", "IGNORE_INDEX", "Conversation", "FormatReport", "LoadedData", "PackingPlan",
    "TokenizedSample", "collate", "dataset_fingerprint", "detect_format", "load_rows",
    "load_examples", "pack", "render", "to_examples", "tokenize_conversation", "tokenize_examples",
    # the data tools (backprop data ...)
    "apply_filters", "build_filters", "build_report", "curriculum_buckets", "curriculum_file", "curriculum_order",
    "dedup_file", "deduplicate", "difficulty_scores", "exact_duplicates", "filter_file", "near_duplicates",
    "perplexity_file", "score_examples", "select_by_perplexity",
]

# packing imports torch, and the data tools their own libraries: they load on first use, so that
# `backprop data filter/dedup/report` starts without torch.
_LAZY = {
    "PackingPlan": "packing", "collate": "packing", "pack": "packing",
    "apply_filters": "quality", "build_filters": "quality", "filter_file": "quality",
    "deduplicate": "dedup", "dedup_file": "dedup", "exact_duplicates": "dedup", "near_duplicates": "dedup",
    "perplexity_file": "perplexity", "score_examples": "perplexity", "select_by_perplexity": "perplexity",
    "curriculum_buckets": "curriculum", "curriculum_file": "curriculum", "curriculum_order": "curriculum",
    "difficulty_scores": "curriculum", "build_report": "report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


@dataclass(frozen=True)
class LoadedData:
    """Examples in the normalized format, before any tokenizer is involved."""

    examples: list[Conversation | str]
    report: FormatReport
    fingerprint: str


def load_examples(source: Any, *, require_assistant: bool = True, format: str | None = None,
                  text_column: str | None = None) -> LoadedData:
    """Load, detect and normalize a dataset; cheap, so bad data fails before a model is loaded."""
    read = read_rows(source)
    with read.located():  # "row 3 ..." becomes "data.jsonl line 4: row 3 ..."
        report = detect_format(read.rows, format=format, text_column=text_column)
        examples = to_examples(read.rows, report, text_column=text_column, require_assistant=require_assistant)
    return LoadedData(examples=examples, report=report, fingerprint=dataset_fingerprint(source))
