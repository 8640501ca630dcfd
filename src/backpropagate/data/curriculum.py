"""Curriculum: order rows from easy to hard, or split them into buckets (one per run of a multi-run).

Difficulty is the row's perplexity under a reference model when scores are given (``backprop data
perplexity`` writes them), otherwise a length/complexity score:

    score = length * (1 + 0.25 * (replies - 1))

where ``length`` is the row's token count when a tokenizer is given (rendered with its chat template) or
its whitespace-separated word count otherwise, and ``replies`` is the number of assistant messages (1 for
raw text): long rows and long multi-turn conversations are harder. Ties keep the input order; rows
without a perplexity score go last.

``Trainer.train(data, curriculum=True)`` uses :func:`training_order`: the rows' ``difficulty`` column when
every row has one (``backprop data curriculum`` writes it), else the length score with the training
tokenizer. It then trains without shuffling, so rows arrive easy to hard (as far as best-fit packing
keeps the order: a short row may join an earlier, partly filled packed row), every epoch the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackpropagateError, invalid_value
from .load import load_rows
from .quality import TokenLength
from .reference import resolve_tokenizer
from .rowset import Example, check_output_path, example_text, load_rowset, write_rows

__all__ = ["CurriculumResult", "bucket_paths", "curriculum_buckets", "curriculum_file", "curriculum_order",
           "difficulty_scores", "length_score", "load_scores", "training_order"]

DIFFICULTY_COLUMN = "difficulty"


def length_score(length: int, replies: int) -> float:
    """The documented fallback difficulty: ``length * (1 + 0.25 * (replies - 1))``."""
    return float(length) * (1.0 + 0.25 * (max(replies, 1) - 1))


def _replies(example: Example) -> int:
    return 1 if isinstance(example, str) else sum(1 for m in example.messages if m["role"] == "assistant")


def difficulty_scores(examples: Sequence[Example], *, scores: Sequence[float | None] | Mapping[int, float] | None = None,
                      tokenizer: Any = None) -> list[float]:
    """One difficulty per example: the given perplexities (missing ones -> +inf), else the length score."""
    if scores is not None:
        if isinstance(scores, Mapping):
            return [_finite_or_inf(scores.get(i)) for i in range(len(examples))]
        if len(scores) != len(examples):
            raise invalid_value("scores", f"{len(scores)} scores", f"one score per row ({len(examples)})")
        return [_finite_or_inf(getattr(s, "perplexity", s)) for s in scores]
    if tokenizer is not None:

        counter = TokenLength(tokenizer, max_tokens=1 << 30)
        lengths = [counter.count(example) for example in examples]
    else:

        lengths = [len(example_text(example, with_roles=False).split()) for example in examples]
    return [length_score(n, _replies(e)) for n, e in zip(lengths, examples, strict=True)]


def _finite_or_inf(value: Any) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return math.inf
    return float(value)


def curriculum_order(examples: Sequence[Example], *, scores: Any = None, tokenizer: Any = None) -> list[int]:
    """Row indices from easiest to hardest (stable: ties keep the input order)."""
    difficulty = difficulty_scores(examples, scores=scores, tokenizer=tokenizer)
    return sorted(range(len(examples)), key=difficulty.__getitem__)


def curriculum_buckets(examples: Sequence[Example], n: int, *, scores: Any = None,
                       tokenizer: Any = None) -> list[list[int]]:
    """``n`` buckets of (nearly) equal size, easiest first; feed one bucket per run of a multi-run."""
    _check_buckets(n, len(examples))
    order = curriculum_order(examples, scores=scores, tokenizer=tokenizer)
    size, extra = divmod(len(order), n)
    buckets, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        buckets.append(order[start:end])
        start = end
    return buckets


def _check_buckets(n: Any, rows: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max(rows, 1):
        raise invalid_value("buckets", n, f"an integer in [1, {rows}] (the number of rows)")


def load_scores(path: str | Path, rows: int) -> dict[int, float]:
    """Perplexities from a ``.scores.jsonl`` written by ``backprop data perplexity`` (0-based row -> score).

    The file may belong to the perplexity run's input (one score per row) or to its output (the rows it
    kept, in order).
    """

    records = load_rows(Path(path).expanduser())
    hint = "Use the .scores.jsonl that `backprop data perplexity` wrote for this dataset (its input or output)."
    if len(records) != rows:
        kept = [record for record in records if record.get("kept") is True]
        if len(kept) != rows:
            raise BackpropagateError(
                "INPUT_INVALID_VALUE", f"{path} has {len(records)} scores ({len(kept)} kept) for a dataset of "
                f"{rows} rows.", hint=hint)
        return {i: float(r["perplexity"]) for i, r in enumerate(kept) if r.get("perplexity") is not None}
    scores: dict[int, float] = {}
    for number, record in enumerate(records, start=1):
        row, value = record.get("row"), record.get("perplexity")
        if isinstance(row, bool) or not isinstance(row, int) or not 1 <= row <= rows:
            raise BackpropagateError(
                "INPUT_INVALID_VALUE", f"{path} line {number}: row={row!r} is not a row of the dataset (1..{rows}).",
                hint=hint)
        if value is not None:
            scores[row - 1] = float(value)
    return scores


def training_order(data: Any, examples: Sequence[Example], lengths: Sequence[int]) -> list[int]:
    """The order ``Trainer.train(curriculum=True)`` uses: the ``difficulty`` column, else the length score
    of the tokenized rows (``lengths`` = tokens per row)."""
    difficulty = _difficulty_column(data, len(examples))
    if difficulty is None:
        difficulty = [length_score(n, _replies(e)) for n, e in zip(lengths, examples, strict=True)]
    return sorted(range(len(examples)), key=difficulty.__getitem__)


def _difficulty_column(data: Any, rows: int) -> list[float] | None:

    try:
        records = load_rows(data)
    except BackpropagateError:
        return None
    if len(records) != rows or not all(DIFFICULTY_COLUMN in record for record in records):
        return None
    values = [record[DIFFICULTY_COLUMN] for record in records]
    numeric = [isinstance(v, int | float) and not isinstance(v, bool) for v in values]
    if not any(numeric) or not all(ok or v is None for ok, v in zip(numeric, values, strict=True)):
        return None
    return [_finite_or_inf(v) for v in values]  # null (an unscored row) sorts last


@dataclass
class CurriculumResult:
    """Rows in curriculum order (0-based), their difficulty, and the buckets (empty when not asked)."""

    order: list[int]
    difficulty: list[float]
    source: str  # "perplexity" or "length"
    buckets: list[list[int]]
    paths: list[Path]


def bucket_paths(output: str | Path, n: int) -> list[Path]:
    """``curriculum.jsonl`` -> ``curriculum.bucket-1.jsonl`` ... ``curriculum.bucket-n.jsonl``."""
    path = Path(output).expanduser()
    return [path.with_name(f"{path.stem}.bucket-{k}.jsonl") for k in range(1, n + 1)]


def curriculum_file(source: Any, output: str | Path, *, scores: str | Path | None = None, tokenizer: Any = None,
                    buckets: int | None = None, keep_format: bool = False, overwrite: bool = False,
                    format: str | None = None, text_column: str | None = None) -> CurriculumResult:
    """Write the rows easy -> hard to ``output`` with a ``difficulty`` column (and ``bucket`` plus one file
    per bucket when ``buckets`` is given)."""
    rowset = load_rowset(source, format=format, text_column=text_column)
    out = check_output_path(output, inputs=[rowset.source], overwrite=overwrite)
    extra_paths: list[Path] = []
    if buckets is not None:
        _check_buckets(buckets, len(rowset))
        for path in bucket_paths(out, buckets):
            extra_paths.append(check_output_path(path, inputs=[rowset.source, out], overwrite=overwrite,
                                                 what="bucket file"))
    perplexities = load_scores(scores, len(rowset)) if scores is not None else None
    if tokenizer is not None and perplexities is None:

        tokenizer = resolve_tokenizer(tokenizer)
    difficulty = difficulty_scores(rowset.examples, scores=perplexities, tokenizer=tokenizer)
    order = sorted(range(len(rowset)), key=difficulty.__getitem__)
    groups = curriculum_buckets(rowset.examples, buckets, scores=difficulty) if buckets else []
    bucket_of = {i: k for k, group in enumerate(groups, start=1) for i in group}
    extra = {i: {DIFFICULTY_COLUMN: _json_number(difficulty[i]), **({"bucket": bucket_of[i]} if groups else {})}
             for i in order}
    write_rows(rowset, order, out, keep_format=keep_format, extra=extra)
    for group, path in zip(groups, extra_paths, strict=True):
        write_rows(rowset, group, path, keep_format=keep_format, extra=extra)
    return CurriculumResult(order=order, difficulty=difficulty, buckets=groups, paths=[out, *extra_paths],
                            source="perplexity" if perplexities is not None else "length")


def _json_number(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 6)
