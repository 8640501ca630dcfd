"""A pre-flight report on a dataset: what it is, how long its rows are, what the tools would remove, and a
PASS / WARN / FAIL verdict, as text, JSON or a self-contained HTML page with the length histogram.

Verdict rules (``FAIL`` beats ``WARN`` beats ``PASS``; every rule that fires is listed as a reason):

* FAIL: a conversation has no assistant reply (training refuses the dataset), or at least half of the
  rows would be removed by the filters and deduplication together.
* WARN: the filters would remove at least 5% of the rows; at least 1% of the rows are duplicates; the
  main language covers less than 90% of the rows; more than 5% of the rows are longer than
  ``max_seq_length`` tokens (they would be truncated); fewer than 50 rows.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import declared_default
from ..errors import BackpropagateError, invalid_value
from .chat_template import template_traits
from .dedup import deduplicate
from .langid import detect_language
from .preview import template_notes
from .quality import EmptyMessages, Language, MissingAssistant, Repetition, TokenLength, apply_filters
from .rowset import Progress, check_output_path, example_text, load_rowset, write_atomically

__all__ = ["DataReport", "build_report", "write_html"]

FAIL_REMOVED_SHARE = 0.5
WARN_FILTERED_SHARE = 0.05
WARN_DUPLICATE_SHARE = 0.01
WARN_MAIN_LANGUAGE_SHARE = 0.9
WARN_TRUNCATED_SHARE = 0.05
WARN_MIN_ROWS = 50
HISTOGRAM_BINS = 20
MAX_SEQ_LENGTH: int = declared_default("max_seq_length")  # training's: rows longer than it are truncated


@dataclass
class DataReport:
    """Everything ``backprop data report`` shows; ``to_dict`` is the JSON form."""
    source: str
    format: str
    format_reason: str
    rows: int
    length_unit: str  # "tokens" (with a tokenizer) or "words"
    length_stats: dict[str, float]
    histogram: dict[str, list[float]]  # {"edges": [...], "counts": [...]}
    unrenderable: int  # rows the chat template refused (token lengths only)
    turns: dict[int, int]  # turns per conversation -> rows
    exact_duplicates: int  # rows that repeat an earlier row exactly
    near_duplicates: int  # further rows that nearly repeat an earlier one
    duplicate_clusters: int
    languages: dict[str, int]
    filters: list[dict[str, Any]]  # name, description, flagged (rows it would drop on its own)
    removed_by_filters: int  # rows at least one filter would drop
    longer_than_max: int
    max_seq_length: int | None
    verdict: str = "PASS"
    reasons: list[str] = field(default_factory=list)
    agentic: dict[str, int] = field(default_factory=dict)  # rows with tool calls, tool results, tools, reasoning
    template_notes: list[str] = field(default_factory=list)  # chat-template fallbacks (with a tokenizer)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["turns"] = {str(k): v for k, v in self.turns.items()}
        return data

    def to_text(self) -> str:
        """A terminal-friendly summary."""
        s = self.length_stats
        lines = [
            f"dataset     {self.source}",
            f"format      {self.format} - {self.format_reason}",
            f"rows        {self.rows}",
            f"length      {self.length_unit}: min {s['min']:g}, median {s['median']:g}, p95 {s['p95']:g}, "
            f"max {s['max']:g}, mean {s['mean']:.1f}",
        ]
        counts = self.histogram["counts"]
        edges = self.histogram["edges"]
        top = max(counts, default=0) or 1
        for k, count in enumerate(counts):
            bar = "#" * round(40 * count / top)
            lines.append(f"  {edges[k]:>9.0f}-{edges[k + 1]:<9.0f} {int(count):>6} {bar}")
        if self.unrenderable:
            lines.append(f"unrenderable {self.unrenderable} rows (the chat template refused them)")
        if self.max_seq_length is not None:
            lines.append(f"too long    {self.longer_than_max} rows > max_seq_length={self.max_seq_length}")
        if self.turns:
            lines.append("turns       " + ", ".join(f"{k}: {v}" for k, v in sorted(self.turns.items())))
        if any(self.agentic.values()):
            lines.append("agentic     " + ", ".join(f"{k} {v}" for k, v in self.agentic.items()) + " (rows)")
        lines += [f"template    {note}" for note in self.template_notes]
        lines.append(f"duplicates  exact {self.exact_duplicates}, near {self.near_duplicates} "
                     f"({self.duplicate_clusters} clusters)")
        lines.append("languages   " + ", ".join(f"{k} {v}" for k, v in self.languages.items()))
        lines.append("filters     " + ", ".join(f"{f['name']} {f['flagged']}" for f in self.filters)
                     + f" (any: {self.removed_by_filters})")
        lines.append(f"verdict     {self.verdict}")
        lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


def build_report(source: Any, *, tokenizer: Any = None, max_seq_length: int | None = MAX_SEQ_LENGTH,
                 languages: Any = None, dedup_threshold: float = 0.8, format: str | None = None,
                 text_column: str | None = None, progress: Progress | None = None) -> DataReport:
    """Analyse a dataset. With ``tokenizer`` lengths are real tokens (rendered with its chat template),
    otherwise words; ``languages`` adds the language filter (the language mix is always measured)."""
    import numpy as np

    if max_seq_length is not None and (isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int)
                                       or max_seq_length < 1):
        raise invalid_value("max_seq_length", max_seq_length, "a positive integer or None")
    rowset = load_rowset(source, format=format, text_column=text_column)
    examples = rowset.examples
    filters: list[Any] = [EmptyMessages(), MissingAssistant(), Repetition()]
    if languages:
        filters.append(Language(languages))
    counter = None
    if tokenizer is not None:
        counter = TokenLength(tokenizer, max_tokens=max_seq_length or (1 << 30))
    lengths: list[int] = []
    unrenderable = 0
    for example in examples:
        if counter is None:
            lengths.append(len(example_text(example, with_roles=False).split()))
            continue
        try:
            lengths.append(counter.count(example))
        except Exception as exc:  # noqa: BLE001 - a refused row is counted, not fatal
            if getattr(exc, "code", "") == "INPUT_TEMPLATE_MISSING":
                raise
            unrenderable += 1
    result = apply_filters(examples, filters, progress=progress)
    dedup = deduplicate(examples, method="both", threshold=dedup_threshold)
    exact, near = dedup[0], dedup[1]
    langs = Counter(detect_language(example_text(e, with_roles=False)).lang for e in examples)
    turns = Counter(sum(1 for m in e.messages if m["role"] != "system") for e in examples if not isinstance(e, str))
    values = np.array(lengths or [0], dtype=np.float64)
    counts, edges = np.histogram(values, bins=min(HISTOGRAM_BINS, max(1, len(set(lengths)))))
    longer = sum(1 for n in lengths if max_seq_length is not None and n > max_seq_length) if counter else 0
    report = DataReport(
        source=str(source), format=rowset.report.name, format_reason=rowset.report.reason, rows=len(examples),
        length_unit="tokens" if counter else "words",
        length_stats={"min": float(values.min()), "median": float(np.median(values)),
                      "p95": float(np.percentile(values, 95)), "max": float(values.max()), "mean": float(values.mean())},
        histogram={"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        unrenderable=unrenderable, turns=dict(sorted(turns.items())),
        exact_duplicates=exact.removed, near_duplicates=near.removed - exact.removed,
        duplicate_clusters=len(exact.clusters) + len(near.clusters), languages=dict(langs.most_common()),
        filters=[{"name": r.name, "description": r.description, "flagged": r.flagged} for r in result.reports],
        removed_by_filters=result.removed, longer_than_max=longer,
        max_seq_length=max_seq_length if counter else None)
    report.agentic = agentic_counts(examples)
    if counter is not None and any(not isinstance(e, str) for e in examples):
        report.template_notes = template_notes(template_traits(counter.tokenizer), examples)
    removed_any = len(set(range(len(examples))) - (set(result.kept) & set(near.kept)))
    _verdict(report, removed_any, counter is not None)
    return report


def agentic_counts(examples: list[Any]) -> dict[str, int]:
    """How many conversations hold tool calls, tool results, tool schemas and reasoning."""
    chats = [e for e in examples if not isinstance(e, str)]
    return {"tool calls": sum(1 for c in chats if any(m.get("tool_calls") for m in c.messages)),
            "tool results": sum(1 for c in chats if any(m["role"] == "tool" for m in c.messages)),
            "tool schemas": sum(1 for c in chats if c.tools),
            "reasoning": sum(1 for c in chats if any(m.get("reasoning_content") for m in c.messages))}


def _verdict(report: DataReport, removed_any: int, tokens: bool) -> None:
    rows = report.rows
    fail, warn = [], []
    no_reply = next((f["flagged"] for f in report.filters if f["name"] == "no_assistant"), 0)
    if no_reply:
        fail.append(f"{no_reply} conversations have no assistant reply: training refuses them "
                    "(run `backprop data filter` to drop them)")
    if removed_any >= FAIL_REMOVED_SHARE * rows:
        fail.append(f"{removed_any} of {rows} rows would be removed by the filters and deduplication")
    if report.removed_by_filters >= WARN_FILTERED_SHARE * rows and report.removed_by_filters:
        warn.append(f"the filters would remove {report.removed_by_filters} rows "
                    f"({report.removed_by_filters / rows:.0%})")
    duplicates = report.exact_duplicates + report.near_duplicates
    if duplicates and duplicates >= WARN_DUPLICATE_SHARE * rows:
        warn.append(f"{duplicates} rows are duplicates ({duplicates / rows:.0%})")
    main, main_rows = next(iter(report.languages.items()), ("und", 0))
    if main_rows < WARN_MAIN_LANGUAGE_SHARE * rows:
        mix = ", ".join(f"{k} {v}" for k, v in list(report.languages.items())[:4])
        warn.append(f"mixed languages: {mix}")
    if tokens and report.longer_than_max > WARN_TRUNCATED_SHARE * rows:
        warn.append(f"{report.longer_than_max} rows are longer than max_seq_length={report.max_seq_length} "
                    "and would be truncated")
    if rows < WARN_MIN_ROWS:
        warn.append(f"only {rows} rows (< {WARN_MIN_ROWS})")
    report.verdict = "FAIL" if fail else "WARN" if warn else "PASS"
    report.reasons = fail + warn or ["no rule fired"]


def histogram_png(report: DataReport) -> bytes:
    """The length histogram as a PNG (matplotlib, no display needed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:

        raise BackpropagateError("DEP_EXTRA_MISSING",
                                 "the HTML report needs matplotlib: pip install 'backpropagate[data]'.") from exc
    edges, counts = report.histogram["edges"], report.histogram["counts"]
    figure = Figure(figsize=(7, 3.2), dpi=100)
    axes = figure.subplots()
    widths = [edges[k + 1] - edges[k] for k in range(len(counts))]
    axes.bar(edges[:-1], counts, width=widths, align="edge", color="#4C72B0", edgecolor="white")
    axes.set_xlabel(f"length ({report.length_unit})")
    axes.set_ylabel("rows")
    axes.set_title(f"{report.rows} rows")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_html(report: DataReport, path: str | Path, *, overwrite: bool = False) -> Path:
    """A self-contained HTML page: the summary table and the histogram embedded as a base64 PNG."""
    target = check_output_path(path, inputs=[Path(report.source)], overwrite=overwrite, what="HTML report",
                               suffixes=(".html", ".htm"))
    image = base64.b64encode(histogram_png(report)).decode("ascii")
    e = html.escape
    color = {"PASS": "#2e7d32", "WARN": "#ef6c00", "FAIL": "#c62828"}[report.verdict]
    rows = [("dataset", report.source), ("format", f"{report.format} - {report.format_reason}"),
            ("rows", report.rows), ("turns", ", ".join(f"{k}: {v}" for k, v in report.turns.items()) or "-"),
            ("duplicates", f"exact {report.exact_duplicates}, near {report.near_duplicates} "
                           f"({report.duplicate_clusters} clusters)"),
            ("languages", ", ".join(f"{k} {v}" for k, v in report.languages.items())),
            ("filters", ", ".join(f"{f['name']} {f['flagged']}" for f in report.filters))]
    table = "\n".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    reasons = "\n".join(f"<li>{e(r)}</li>" for r in report.reasons)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>backpropagate data report</title>
<style>body{{font-family:sans-serif;max-width:56rem;margin:2rem auto}}th{{text-align:left;padding-right:1rem}}
.verdict{{color:{color};font-weight:bold}}</style></head>
<body><h1>Data report</h1>
<p class="verdict">Verdict: {e(report.verdict)}</p><ul>{reasons}</ul>
<table>{table}</table>
<h2>Length histogram ({e(report.length_unit)})</h2>
<img alt="length histogram" src="data:image/png;base64,{image}">
</body></html>
"""

    return write_atomically(target, lambda handle: handle.write(page))
