"""``backprop eval``: held-out loss and perplexity of a saved adapter and its base (``backpropagate.evaluate``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..option_catalog import declared
from . import app
from .progress import batch_progress


@app.command("eval")
def eval_command(
    adapter: Path = typer.Argument(..., help="Adapter folder (what trainer.save writes) or full model folder."),
    data: str = typer.Option(..., "--data", "-d", help="Rows to score: a file (JSONL, JSON, CSV, Parquet, TXT), "
                             "a save_to_disk folder or a hub dataset name."),
    base: str = typer.Option(None, "--base", help="Base model folder or hub id [default: the adapter's own]."),
    no_base: bool = typer.Option(False, "--no-base", help="Score the adapter only, not its base."),
    format: str = typer.Option(None, "--format", help="Dataset format [default: detected]."),
    text_column: str = typer.Option(None, "--text-column", help="Column holding the text [default: detected]."),
    max_seq_length: int = typer.Option(declared("max_seq_length").default, "--max-seq-length",
                                       help="Tokens per packed row."),
    batch_size: int = typer.Option(4, "--batch-size", help="Packed rows per forward pass."),
    all_tokens: bool = typer.Option(False, "--all-tokens", help="Score every token of a conversation, not only "
                                    "the assistant replies (train_on_responses=False)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Score a saved adapter and its base on a dataset: mean loss per label token and perplexity."""
    from transformers.utils import logging as hf_logging

    from ..scoring import evaluate  # lazy: torch

    hf_logging.disable_progress_bar()
    with batch_progress("scoring", enabled=not as_json) as progress:
        report = evaluate(adapter, data, base=base, include_base=not no_base, format=format,
                          text_column=text_column, max_seq_length=max_seq_length, batch_size=batch_size,
                          train_on_responses=not all_tokens, progress=progress)
    typer.echo(report.to_json() if as_json else report.table())
