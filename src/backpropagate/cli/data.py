"""``backprop data filter|dedup|perplexity|curriculum|report|preview``: thin shells over ``backpropagate.data``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..option_catalog import declared
from . import app

if TYPE_CHECKING:
    from ..data.preview import RowPreview

data_app = typer.Typer(help="Clean a dataset before training: filter, deduplicate, score, order, report, and "
                       "preview what a row becomes for a model.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")

SOURCE_HELP = "Dataset file, save_to_disk folder or hub dataset name."
OUT_HELP = "Output .jsonl file (a new file: never the input)."
KEEP_HELP = "Write the rows with their original keys instead of the normalized messages/text format."
OVERWRITE_HELP = "Replace output files that already exist."
FORMAT_HELP = "Force the dataset format: sharegpt, alpaca, openai, chatml, text."
TEXT_COLUMN_HELP = "Column holding raw or ChatML text [default: text]."


@contextmanager
def _bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr, fed by the API's ``progress(done, total)`` callback."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    progress = Progress(TextColumn(f"[bold]{description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    task = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield update


@data_app.command("filter")
def filter_command(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    filters: str = typer.Option(None, "--filters", help="Comma-separated filters: empty, no_assistant, turns, tokens, "
                                "language, repetition [default: empty,no_assistant,repetition plus turns/tokens/"
                                "language when their options are given]."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Hub id or folder whose tokenizer (and chat template) "
                                  "counts tokens for the tokens filter."),
    min_tokens: int = typer.Option(None, "--min-tokens", help="Drop rows shorter than this many tokens."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Drop rows longer than this many tokens."),
    min_turns: int = typer.Option(None, "--min-turns", help="Drop conversations with fewer turns (messages "
                                  "other than system) [default when the turns filter runs: 2]."),
    max_turns: int = typer.Option(None, "--max-turns", help="Drop conversations with more turns."),
    languages: str = typer.Option(None, "--languages", help="Allowed languages, comma-separated ISO 639 codes (en,fr)."),
    min_language_score: float = typer.Option(None, "--min-language-score", help="Drop a row in another language "
                                             "only when the detector is at least this sure [default: 0.5]."),
    max_repetition: float = typer.Option(None, "--max-repetition", help="Drop rows where a message repeats more "
                                         "than this share of its word n-grams, in (0, 1) [default: 0.5]."),
    ngram: int = typer.Option(None, "--ngram", help="n of the repetition filter's word n-grams [default: 3]."),
    report_json: Path = typer.Option(None, "--report-json", help="Also write what each filter removed and why (.json)."),
    keep_format: bool = typer.Option(False, "--keep-format", help=KEEP_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    text_column: str = typer.Option(None, "--text-column", help=TEXT_COLUMN_HELP),
) -> None:
    """Drop rows that fail quality filters; print how many each filter removed."""
    from ..data.quality import build_filters, filter_file  # lazy: --help loads no data tool

    names = [n.strip() for n in filters.split(",") if n.strip()] if filters is not None else None
    chosen = build_filters(names, tokenizer=tokenizer, min_tokens=min_tokens, max_tokens=max_tokens,
                           min_turns=min_turns, max_turns=max_turns, languages=languages,
                           min_score=min_language_score, max_ratio=max_repetition, ngram=ngram)
    with _bar("filtering") as progress:
        result = filter_file(source, out, chosen, keep_format=keep_format, report_json=report_json,
                             overwrite=overwrite, format=format, text_column=text_column, progress=progress)
    for report in result.reports:
        typer.echo(f"{report.name:<13} removed {len(report.removed):>6}  ({report.description})")
    typer.echo(f"kept {len(result.kept)} of {result.total} rows -> {out}")


@data_app.command("dedup")
def dedup_command(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    method: str = typer.Option("both", "--method", help="exact, minhash, or both (exact first)."),
    threshold: float = typer.Option(0.8, "--threshold", help="Jaccard similarity of word shingles at which two "
                                    "rows are near-duplicates, in (0, 1)."),
    num_perm: int = typer.Option(128, "--num-perm", help="MinHash permutations, in [16, 1024]."),
    shingle_size: int = typer.Option(3, "--shingle-size", help="Words per shingle, in [1, 32]."),
    seed: int = typer.Option(1, "--seed", help="MinHash seed."),
    report_json: Path = typer.Option(None, "--report-json", help="Also write the clusters found (.json)."),
    keep_format: bool = typer.Option(False, "--keep-format", help=KEEP_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    text_column: str = typer.Option(None, "--text-column", help=TEXT_COLUMN_HELP),
) -> None:
    """Remove exact and near-duplicate rows, keeping the first row of each cluster."""
    from ..data.dedup import dedup_file  # lazy: numpy, datasketch

    with _bar("deduplicating") as progress:
        results = dedup_file(source, out, method=method, threshold=threshold, num_perm=num_perm,
                             shingle_size=shingle_size, seed=seed, keep_format=keep_format, report_json=report_json,
                             overwrite=overwrite, format=format, text_column=text_column, progress=progress)
    before = results[0].total
    for result in results:
        typer.echo(f"{result.method:<8} removed {before - len(result.kept):>6} rows in {len(result.clusters)} clusters")
        before = len(result.kept)
    typer.echo(f"kept {len(results[-1].kept)} of {results[0].total} rows -> {out}")


@data_app.command("perplexity")
def perplexity_command(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP + " Scores go to <out stem>.scores.jsonl."),
    model: str = typer.Option(None, "--model", "-m", help="Reference causal LM (hub id or folder) "
                              "[default: the training model, BACKPROPAGATE_MODEL__NAME]."),
    on: str = typer.Option("assistant", "--on", help="Score assistant tokens only (assistant) or every token (all)."),
    max_perplexity: float = typer.Option(None, "--max-perplexity", help="Drop rows above this perplexity."),
    min_perplexity: float = typer.Option(None, "--min-perplexity", help="Drop rows below this perplexity."),
    max_percentile: float = typer.Option(None, "--max-percentile", help="Drop rows above this percentile of the "
                                         "scores (95 drops the worst 5%)."),
    min_percentile: float = typer.Option(None, "--min-percentile", help="Drop rows below this percentile."),
    batch_size: int = typer.Option(8, "--batch-size", help="Packed rows per forward pass."),
    max_seq_length: int = typer.Option(1024, "--max-seq-length", help="Tokens per packed row; longer rows are "
                                       "scored on their first tokens."),
    packing: bool = typer.Option(True, "--packing/--no-packing", help="Pack rows without padding (off: one row "
                                 "per sequence)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code from the model repo."),
    keep_format: bool = typer.Option(False, "--keep-format", help=KEEP_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    text_column: str = typer.Option(None, "--text-column", help=TEXT_COLUMN_HELP),
) -> None:
    """Score every row's perplexity with a reference model; drop rows outside the thresholds."""
    from ..data.perplexity import perplexity_file, scores_path_for  # lazy: torch

    name = _model_name(model)
    with _bar("scoring") as progress:
        result = perplexity_file(source, out, name, on=on, max_perplexity=max_perplexity,
                                 min_perplexity=min_perplexity, max_percentile=max_percentile,
                                 min_percentile=min_percentile, batch_size=batch_size, max_seq_length=max_seq_length,
                                 packing=packing, keep_format=keep_format, overwrite=overwrite,
                                 trust_remote_code=trust_remote_code, format=format, text_column=text_column,
                                 progress=progress)
    summary = result.to_dict()
    cutoffs = ", ".join(f"{k} {v:.4g}" for k, v in result.cutoffs.items()) or "none"
    typer.echo(f"scored {summary['rows'] - summary['unscored']} rows ({summary['unscored']} unscored); cutoffs: {cutoffs}")
    typer.echo(f"kept {len(result.kept)} of {len(result.scores)} rows -> {out}")
    typer.echo(f"scores -> {scores_path_for(out)}")


@data_app.command("curriculum")
def curriculum_command(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP + " Rows come easy to hard with a difficulty column."),
    scores: Path = typer.Option(None, "--scores", help="A .scores.jsonl from `backprop data perplexity` on this same "
                                "dataset: order by perplexity."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Measure length in this tokenizer's tokens instead of "
                                  "words (length score only)."),
    buckets: int = typer.Option(None, "--buckets", help="Also split into N files <out stem>.bucket-K.jsonl, "
                                "easiest first (one per run of a multi-run)."),
    keep_format: bool = typer.Option(False, "--keep-format", help=KEEP_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    text_column: str = typer.Option(None, "--text-column", help=TEXT_COLUMN_HELP),
) -> None:
    """Order rows from easy to hard by perplexity (with --scores) or a length/complexity score."""
    from ..data.curriculum import curriculum_file  # lazy: --help loads no data tool

    with _bar("ordering") as progress:
        progress(0, 1)
        result = curriculum_file(source, out, scores=scores, tokenizer=tokenizer, buckets=buckets,
                                 keep_format=keep_format, overwrite=overwrite, format=format, text_column=text_column)
        progress(1, 1)
    typer.echo(f"ordered {len(result.order)} rows by {result.source} -> {out}")
    for k, (group, path) in enumerate(zip(result.buckets, result.paths[1:], strict=True), start=1):
        typer.echo(f"bucket {k}: {len(group)} rows -> {path}")


@data_app.command("report")
def report_command(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Count real tokens with this tokenizer's chat template "
                                  "[default: count words]."),
    max_seq_length: int = typer.Option(declared("max_seq_length").default, "--max-seq-length", help="Rows longer "
                                       "than this (in tokens) are "
                                       "reported as truncated."),
    languages: str = typer.Option(None, "--languages", help="Also run the language filter for these codes (en,fr)."),
    html: Path = typer.Option(None, "--html", help="Write a self-contained HTML report with the histogram."),
    json_path: Path = typer.Option(None, "--json", help="Write the report as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    text_column: str = typer.Option(None, "--text-column", help=TEXT_COLUMN_HELP),
) -> None:
    """Format, rows, lengths, turns, duplicates, languages, filter counts and a PASS/WARN/FAIL verdict.

    Exits with status 2 when the verdict is FAIL.
    """
    from ..data.report import build_report, write_html  # lazy: numpy, matplotlib
    from ..data.rowset import check_output_path, write_json  # lazy: --help loads no data tool

    if json_path is not None:  # refuse bad output paths before the (long) analysis
        check_output_path(json_path, inputs=[Path(source)], overwrite=overwrite, what="JSON report", suffixes=(".json",))
    if html is not None:
        check_output_path(html, inputs=[Path(source), json_path], overwrite=overwrite, what="HTML report",
                          suffixes=(".html", ".htm"))
    with _bar("analysing") as progress:
        report = build_report(source, tokenizer=tokenizer, max_seq_length=max_seq_length, languages=languages,
                              format=format, text_column=text_column, progress=progress)
    typer.echo(report.to_text())
    if html is not None:
        typer.echo(f"html -> {write_html(report, html, overwrite=overwrite)}")
    if json_path is not None:
        typer.echo(f"json -> {write_json(json_path, report.to_dict())}")
    if report.verdict == "FAIL":
        raise typer.Exit(2)


@data_app.command("preview")
def preview_command(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    model: str = typer.Option(None, "--model", "-m", help="Model (hub id or folder) whose tokenizer and chat "
                              "template render the row [default: the training model, BACKPROPAGATE_MODEL__NAME]."),
    row: int = typer.Option(1, "--row", help="Row number, from 1."),
    json_output: bool = typer.Option(False, "--json", help="Print the text, token ids and labels as JSON."),
    all_tokens: bool = typer.Option(False, "--all-tokens", help="Preview training on every token "
                                    "(train_on_responses=False)."),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    text_column: str = typer.Option(None, "--text-column", help=TEXT_COLUMN_HELP),
) -> None:
    """Show what one row becomes for a model: the rendered text with the trained tokens highlighted."""
    from ..data.preview import preview  # lazy: transformers templates
    from ..data.reference import resolve_tokenizer  # lazy: transformers tokenizers

    tokenizer = resolve_tokenizer(_model_name(model))
    shown = preview(source, tokenizer, row, train_on_responses=not all_tokens, format=format, text_column=text_column)
    if json_output:
        typer.echo(json.dumps(shown.to_dict(), ensure_ascii=False))
        return
    _print_preview(shown)


def _print_preview(shown: RowPreview) -> None:
    """The rendered row with trained text highlighted, then the trained parts alone (readable in a pipe)."""
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"{shown.summary()} (trained text highlighted)")
    for note in shown.notes:
        console.print(f"note: {note}")
    console.print(Text.assemble(*[(text, "bold black on green" if trained else "dim") for text, trained in shown.segments]))
    console.print("--- trained parts ---")
    for text, trained in shown.segments:
        if trained:
            console.print(Text(text, style="green"))


def _model_name(model: str | None) -> str:
    """``model``, else the one the settings name (BACKPROPAGATE_MODEL__NAME or the default)."""
    from ..config import resolve_settings  # lazy: pydantic-settings (--help stays light)

    return model or resolve_settings().model.name
