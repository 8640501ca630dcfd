"""A dataset as the data tools see it: original rows, their normalized examples, and safe JSONL output.

The tools (filter, dedup, perplexity, curriculum) all select or reorder rows by index, so they share one
loader that keeps the original row next to its normalized example, and one writer that emits either the
normalized format (OpenAI ``messages`` or raw ``text``) or the original row keys. The writer never touches
the input file and replaces the output atomically, so an error leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import check_output_location, write_file_atomically
from ..errors import BackpropagateError
from .formats import Conversation, FormatReport, detect_format, to_examples
from .load import read_rows

__all__ = ["Example", "Progress", "RowSet", "check_output_path", "example_text", "load_rowset", "message_text",
           "normalize_text", "write_atomically", "write_json", "write_jsonl", "write_rows"]

Example = Conversation | str
#: ``progress(done, total)``: called while a long operation runs (the CLI draws a bar from it).
Progress = Callable[[int, int], None]
OUTPUT_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class RowSet:
    """Original rows and their normalized examples, index-aligned; ``source`` is the input path, if any."""

    rows: list[dict[str, Any]]
    examples: list[Example]
    report: FormatReport
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.examples)


def load_rowset(source: Any, *, format: str | None = None, text_column: str | None = None) -> RowSet:
    """Load and normalize a dataset without requiring an assistant turn, so the filters can judge every row."""
    read = read_rows(source)
    rows = read.rows
    with read.located():  # "row 3 ..." becomes "data.jsonl line 4: row 3 ..."
        report = detect_format(rows, format=format, text_column=text_column)
        examples = to_examples(rows, report, text_column=text_column, require_assistant=False)
    path = Path(source).expanduser() if isinstance(source, str | Path) and Path(source).expanduser().exists() else None
    return RowSet(rows=rows, examples=examples, report=report, source=path)


def example_text(example: Example, *, with_roles: bool = True) -> str:
    """The example as one string: ``role: content`` lines for conversations, the text itself for raw rows."""
    if isinstance(example, str):
        return example
    if with_roles:
        return "\n".join(f"{m['role']}: {message_text(m)}" for m in example.messages)
    return "\n".join(message_text(m) for m in example.messages)


def message_text(message: dict[str, Any]) -> str:
    """Reasoning, text and tool calls of a turn: two rows that call different tools are different rows."""
    parts = [message.get("reasoning_content") or "", message["content"]]
    parts += [json.dumps(c["function"], ensure_ascii=False, sort_keys=True) for c in message.get("tool_calls", ())]
    return "\n".join(part for part in parts if part)


def normalize_text(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: what "the same text" means for exact deduplication."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def normalized_row(example: Example) -> dict[str, Any]:
    """The normalized JSONL row: ``{"messages": [...]}`` (plus ``tools``) or ``{"text": ...}``."""
    if isinstance(example, str):
        return {"text": example}
    row: dict[str, Any] = {"messages": [dict(m) for m in example.messages]}
    if example.tools:
        row["tools"] = example.tools
    return row


def check_output_path(output: str | Path, *, inputs: Iterable[Path | None] = (), overwrite: bool = False,
                      what: str = "output", suffixes: tuple[str, ...] = OUTPUT_SUFFIXES) -> Path:
    """Refuse an output that is one of ``inputs``, a folder, of another suffix, or existing (unless ``overwrite``).

    ``inputs`` holds the source dataset first, then other files of the same command that it must not clobber.
    """

    path = Path(output).expanduser()
    check_output_location(path, f"the {what}")
    for number, other in enumerate(inputs):
        if other is not None and _same_file(path, other):
            where = "the input dataset" if number == 0 else "another output of this command"
            raise BackpropagateError(
                "INPUT_OUTPUT_IS_INPUT", f"the {what} {str(path)!r} is {where} ({str(other)!r}).")
    if path.is_dir():
        raise BackpropagateError("INPUT_OUTPUT_DIR_INVALID", f"the {what} {str(path)!r} is a folder; name a file.")
    if path.suffix.lower() not in suffixes:
        raise BackpropagateError(
            "INPUT_INVALID_VALUE", f"{what}={str(path)!r} is invalid: expected a {' or '.join(suffixes)} file.")
    if path.exists() and not overwrite:
        raise BackpropagateError(
            "STATE_OUTPUT_EXISTS", f"the {what} {str(path)!r} exists.",
            hint="Choose another path, or pass overwrite=True (--overwrite) to replace it.")
    parent = path.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BackpropagateError(
            "INPUT_OUTPUT_DIR_INVALID", f"the folder of the {what} {str(path)!r} cannot be written.")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write JSON lines to ``path`` through a sibling temp file swapped in at the end."""
    return write_atomically(path, lambda handle: handle.writelines(
        json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write one indented JSON document to ``path`` atomically."""
    return write_atomically(path, lambda handle: handle.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n"))


def write_atomically(path: Path, fill: Callable[[Any], Any]) -> Path:
    """``fill(handle)`` writes UTF-8 text to ``path`` through a temp file swapped in at the end (reports use it too)."""

    def write(partial: Path) -> None:
        with partial.open("w", encoding="utf-8") as handle:
            fill(handle)

    return write_file_atomically(Path(path).expanduser(), write)


def write_rows(rowset: RowSet, indices: Sequence[int], path: Path, *, keep_format: bool = False,
               extra: Mapping[int, Mapping[str, Any]] | None = None) -> Path:
    """Write the rows at ``indices`` (in that order), normalized or in their original keys, plus ``extra`` fields."""
    def records() -> Iterable[dict[str, Any]]:
        for index in indices:
            record = dict(rowset.rows[index]) if keep_format else normalized_row(rowset.examples[index])
            if extra and index in extra:
                record.update(extra[index])
            yield record

    return write_jsonl(path, records())
