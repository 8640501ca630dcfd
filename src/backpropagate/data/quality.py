"""Quality filters: drop rows that would waste training time, and say which filter dropped each and why.

Every filter answers one question per row (``check`` returns a reason, or ``None`` to keep it). Filters run
in the given order; a row is attributed to the first filter that rejects it (``removed``), and each
filter also counts every row it would reject on its own (``flagged``), which is what the data report shows.

Definitions: a *turn* is a message other than the system prompt (a question and its answer are two
turns); *token length* is the length of the conversation rendered with the tokenizer's own chat template
(raw text: bos + text + eos); *repetition* is, per message, the share of its word n-grams that repeat an
earlier n-gram of the same message (0 = none, 0.9 = a loop), and the row's value is its worst message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import BackpropagateError, invalid_value
from .langid import detect_language
from .reference import resolve_tokenizer
from .rowset import (
    Example,
    Progress,
    check_output_path,
    example_text,
    load_rowset,
    message_text,
    write_json,
    write_rows,
)
from .templates import tokenize_conversation, tokenize_text

__all__ = ["DEFAULT_FILTERS", "FILTER_NAMES", "EmptyMessages", "FilterReport", "FilterResult", "Language", "MissingAssistant",
           "Predicate", "QualityFilter", "Repetition", "TokenLength", "TurnCount", "apply_filters",
           "build_filters", "filter_file", "repetition_ratio"]

# How many example reasons a report keeps per filter (the counts are always complete).
_REASON_SAMPLES = 20


class QualityFilter:
    """One rule; subclasses set ``name`` and implement ``check`` (and ``describe`` for reports)."""

    name: ClassVar[str] = "filter"

    def check(self, example: Example) -> str | None:
        """Why ``example`` should be dropped, or ``None`` to keep it."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class EmptyMessages(QualityFilter):
    """Drop rows with an empty or whitespace-only message (raw text: an empty document)."""

    name = "empty"

    def check(self, example: Example) -> str | None:
        if isinstance(example, str):
            return "the text is empty" if not example.strip() else None
        for turn, message in enumerate(example.messages, start=1):
            if not message_text(message).strip():
                return f"turn {turn} ({message['role']}) is empty"
        return None

    def describe(self) -> str:
        return "empty or whitespace-only messages"


class MissingAssistant(QualityFilter):
    """Drop conversations without a non-empty assistant reply (training on them would fail)."""

    name = "no_assistant"

    def check(self, example: Example) -> str | None:
        if isinstance(example, str):
            return None
        if not any(m["role"] == "assistant" and message_text(m).strip() for m in example.messages):
            return "no assistant reply"
        return None

    def describe(self) -> str:
        return "conversations without an assistant reply"


@dataclass
class TurnCount(QualityFilter):
    """Keep conversations with ``min_turns`` to ``max_turns`` turns (messages other than system)."""

    min_turns: int = 2
    max_turns: int | None = None
    name: ClassVar[str] = "turns"

    def __post_init__(self) -> None:
        _check_int("min_turns", self.min_turns, 1)
        if self.max_turns is not None:
            _check_int("max_turns", self.max_turns, self.min_turns)

    def check(self, example: Example) -> str | None:
        if isinstance(example, str):
            return None
        turns = sum(1 for m in example.messages if m["role"] != "system")
        if turns < self.min_turns:
            return f"{turns} turns < min_turns={self.min_turns}"
        if self.max_turns is not None and turns > self.max_turns:
            return f"{turns} turns > max_turns={self.max_turns}"
        return None

    def describe(self) -> str:
        return f"turns in [{self.min_turns}, {self.max_turns if self.max_turns is not None else 'inf'}]"


@dataclass
class TokenLength(QualityFilter):
    """Keep rows whose rendered length in real tokens lies in [``min_tokens``, ``max_tokens``].

    ``tokenizer`` is a loaded tokenizer or a hub id / folder; conversations are rendered with its chat
    template, and a row the template refuses is dropped with the template's reason.
    """

    tokenizer: Any
    min_tokens: int | None = None
    max_tokens: int | None = None
    trust_remote_code: bool = False
    name: ClassVar[str] = "tokens"

    def __post_init__(self) -> None:

        if self.min_tokens is None and self.max_tokens is None:
            raise BackpropagateError(
                "INPUT_INVALID_VALUE", "the tokens filter needs min_tokens or max_tokens (or both).")
        if self.min_tokens is not None:
            _check_int("min_tokens", self.min_tokens, 0)
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, max(1, self.min_tokens or 0))
        self.tokenizer = resolve_tokenizer(self.tokenizer, trust_remote_code=self.trust_remote_code)

    def count(self, example: Example) -> int:
        """Tokens of the example rendered with the tokenizer's chat template (raw text: bos + text + eos)."""

        if isinstance(example, str):
            return len(tokenize_text(self.tokenizer, example).input_ids)
        return len(tokenize_conversation(self.tokenizer, example, train_on_responses=False).input_ids)

    def check(self, example: Example) -> str | None:
        try:
            n = self.count(example)
        except BackpropagateError as exc:
            if exc.code in ("INPUT_TEMPLATE_MISSING",):
                raise
            return f"cannot be rendered: {exc.message}"
        if self.min_tokens is not None and n < self.min_tokens:
            return f"{n} tokens < min_tokens={self.min_tokens}"
        if self.max_tokens is not None and n > self.max_tokens:
            return f"{n} tokens > max_tokens={self.max_tokens}"
        return None

    def describe(self) -> str:
        low = self.min_tokens if self.min_tokens is not None else 0
        high = self.max_tokens if self.max_tokens is not None else "inf"
        return f"tokens in [{low}, {high}] ({getattr(self.tokenizer, 'name_or_path', 'tokenizer')})"


@dataclass
class Language(QualityFilter):
    """Keep rows in one of ``languages`` (ISO 639 codes such as ``en``).

    A row is dropped when the detector names another language with probability >= ``min_score``; rows it
    is unsure about (mixed text, code, tables) and rows without letters are kept.
    """

    languages: Sequence[str] = ("en",)
    min_score: float = 0.5
    name: ClassVar[str] = "language"

    def __post_init__(self) -> None:
        if isinstance(self.languages, str):
            self.languages = [part for part in self.languages.split(",") if part.strip()]
        codes = [str(code).strip().lower() for code in self.languages]
        if not codes or not all(code.replace("_", "").replace("-", "").isalnum() for code in codes):
            raise invalid_value("languages", list(self.languages), "language codes such as ['en', 'fr']")
        self.languages = tuple(codes)
        if isinstance(self.min_score, bool) or not isinstance(self.min_score, int | float) or not (
                0.0 <= self.min_score <= 1.0):
            raise invalid_value("min_score", self.min_score, "a number in [0, 1]")

    def check(self, example: Example) -> str | None:

        guess = detect_language(example_text(example, with_roles=False))
        if guess.lang == "und" or guess.lang in self.languages or guess.score < self.min_score:
            return None
        return f"language {guess.lang} ({guess.score:.2f}), expected {'/'.join(self.languages)}"

    def describe(self) -> str:
        return f"language in {'/'.join(self.languages)} (others dropped at score >= {self.min_score})"


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of the word ``n``-grams of ``text`` that repeat an earlier one (0 when there are fewer than 2)."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


@dataclass
class Repetition(QualityFilter):
    """Drop rows where a message repeats itself: more than ``max_ratio`` of its word ``ngram``-grams repeat."""

    max_ratio: float = 0.5
    ngram: int = 3
    name: ClassVar[str] = "repetition"

    def __post_init__(self) -> None:
        if isinstance(self.max_ratio, bool) or not isinstance(self.max_ratio, int | float) or not (
                0.0 < self.max_ratio < 1.0):
            raise invalid_value("max_ratio", self.max_ratio, "a number in (0, 1)")
        _check_int("ngram", self.ngram, 1)

    def check(self, example: Example) -> str | None:
        texts = [example] if isinstance(example, str) else [m["content"] for m in example.messages]
        worst = max((repetition_ratio(text, self.ngram) for text in texts), default=0.0)
        if worst > self.max_ratio:
            return f"{worst:.0%} of {self.ngram}-grams repeat > max_ratio={self.max_ratio}"
        return None

    def describe(self) -> str:
        return f"repeated {self.ngram}-grams <= {self.max_ratio:.0%}"


class Predicate(QualityFilter):
    """A user rule: ``keep(example) -> bool`` (True keeps); ``example`` is a Conversation or a str."""

    def __init__(self, keep: Callable[[Example], bool], name: str = "predicate",
                 reason: str = "rejected by the predicate") -> None:
        if not callable(keep):
            raise invalid_value("keep", keep, "a callable example -> bool")
        self.keep = keep
        self.name = name  # type: ignore[misc]  # an instance name, so several predicates report apart
        self.reason = reason

    def check(self, example: Example) -> str | None:
        return None if self.keep(example) else self.reason

    def describe(self) -> str:
        return f"user predicate {self.name!r}"


FILTER_NAMES = ("empty", "no_assistant", "turns", "tokens", "language", "repetition")
_CLASSES: dict[str, Callable[..., QualityFilter]] = {
    "empty": EmptyMessages, "no_assistant": MissingAssistant, "turns": TurnCount, "tokens": TokenLength,
    "language": Language, "repetition": Repetition,
}


DEFAULT_FILTERS = ("empty", "no_assistant", "repetition")


def build_filters(names: Iterable[str] | None = None, **params: Any) -> list[QualityFilter]:
    """Filters by name, each given the ``params`` it accepts (e.g. ``max_tokens=`` for ``tokens``).

    ``names=None`` means the defaults (empty, no_assistant, repetition) plus every filter whose own
    parameters are given: ``tokens`` with ``tokenizer``, ``language`` with ``languages``, ``turns`` with
    ``min_turns``/``max_turns``.
    """
    import inspect

    given = {k: v for k, v in params.items() if v is not None}
    if names is None:
        names = [*DEFAULT_FILTERS,
                 *(["turns"] if {"min_turns", "max_turns"} & set(given) else []),
                 *(["tokens"] if "tokenizer" in given else []),
                 *(["language"] if "languages" in given else [])]
    filters = []
    for name in names:
        if name not in _CLASSES:
            raise BackpropagateError(
                "INPUT_UNKNOWN_FILTER", f"unknown filter {name!r}; known filters: {', '.join(FILTER_NAMES)}.")
        if name == "tokens" and "tokenizer" not in given:
            raise BackpropagateError("INPUT_INVALID_VALUE", "the tokens filter needs a tokenizer (--tokenizer).")
        cls = _CLASSES[name]
        accepted = set(inspect.signature(cls).parameters)
        filters.append(cls(**{k: v for k, v in given.items() if k in accepted}))
    return filters


@dataclass
class FilterReport:
    """What one filter did: rows it removed (first filter to reject them) and rows it flags on its own."""

    name: str
    description: str
    removed: list[int] = field(default_factory=list)  # 0-based row indices
    flagged: int = 0
    reasons: dict[int, str] = field(default_factory=dict)  # row index -> why (for removed rows)

    def to_dict(self) -> dict[str, Any]:
        samples = [{"row": i + 1, "reason": self.reasons[i]} for i in self.removed[:_REASON_SAMPLES]]
        return {"filter": self.name, "description": self.description, "removed": len(self.removed),
                "flagged": self.flagged, "examples": samples}


@dataclass
class FilterResult:
    """Rows kept (0-based, in order) and one report per filter."""

    total: int
    kept: list[int]
    reports: list[FilterReport]

    @property
    def removed(self) -> int:
        return self.total - len(self.kept)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.total, "kept": len(self.kept), "removed": self.removed,
                "filters": [report.to_dict() for report in self.reports]}


def apply_filters(examples: Sequence[Example], filters: Sequence[QualityFilter], *,
                  progress: Progress | None = None) -> FilterResult:
    """Run every filter on every example; keep the rows no filter rejects."""
    if not filters:
        raise invalid_value("filters", [], "at least one filter")
    names = [f.name for f in filters]
    if len(set(names)) != len(names):
        raise invalid_value("filters", names, "filters with distinct names")
    reports = [FilterReport(f.name, f.describe()) for f in filters]
    kept: list[int] = []
    total = len(examples)
    for index, example in enumerate(examples):
        first: FilterReport | None = None
        for flt, report in zip(filters, reports, strict=True):
            reason = flt.check(example)
            if reason is None:
                continue
            report.flagged += 1
            if first is None:
                first = report
                report.removed.append(index)
                report.reasons[index] = reason
        if first is None:
            kept.append(index)
        if progress is not None:
            progress(index + 1, total)
    return FilterResult(total=total, kept=kept, reports=reports)


def filter_file(source: Any, output: str | Path, filters: Sequence[QualityFilter], *, keep_format: bool = False,
                report_json: str | Path | None = None, overwrite: bool = False, format: str | None = None,
                text_column: str | None = None, progress: Progress | None = None) -> FilterResult:
    """Filter a dataset into ``output`` (JSONL, normalized or ``keep_format``); the report optionally as JSON."""
    rowset = load_rowset(source, format=format, text_column=text_column)
    out = check_output_path(output, inputs=[rowset.source], overwrite=overwrite)
    report_path = None if report_json is None else check_output_path(
        report_json, inputs=[rowset.source, out], overwrite=overwrite, what="report", suffixes=(".json",))
    result = apply_filters(rowset.examples, filters, progress=progress)
    write_rows(rowset, result.kept, out, keep_format=keep_format)
    if report_path is not None:
        write_json(report_path, {"input": str(source), "output": str(out), **result.to_dict()})
    return result


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid_value(name, value, f"an integer >= {minimum}")
