"""``backprop list-runs | show-run | diff-runs | replay | export-runs``: thin shells over ``backpropagate.runs``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from ..redaction import redact_tree
from . import app
from .progress import TrainingProgress

_OUTPUT_HELP = "Output directory whose runs.db to read [default: every output directory trained into]."


def _runs() -> Any:
    """``backpropagate.runs``, imported on use: it reads the settings and logs, which --help does not need."""
    from .. import runs  # lazy: pydantic-settings, structlog (--help stays light)

    return runs


def _text() -> Any:
    """``backpropagate.runs.describe``: how a run reads as text (``describe``, ``short``, ``seconds_text``)."""
    from ..runs import describe  # lazy: pydantic-settings, structlog (--help stays light)

    return describe


def _console() -> Any:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=False)
    return console if console.is_terminal else Console(highlight=False, soft_wrap=False, width=160)


@app.command("list-runs")
def list_runs(
    status: str = typer.Option(None, "--status", help="Only runs with this status: running, completed, failed, "
                               "interrupted."),
    limit: int = typer.Option(20, "--limit", help="Show at most this many runs, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (one JSON array)."),
    output: Path = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
) -> None:
    """The recorded runs, newest first."""
    from rich.table import Table

    records = _runs().list(output, status=status, limit=limit)
    if as_json:
        typer.echo(json.dumps([redact_tree(asdict(r)) for r in records], indent=2, default=str))
        return
    if not records:
        typer.echo("no runs recorded" + (f" in {output}" if output else ""))
        return
    table = Table(title=f"{len(records)} run(s)")
    for column in ("id", "status", "model", "dataset", "steps", "final loss", "duration", "started"):
        table.add_column(column, justify="right" if column in {"steps", "final loss", "duration"} else "left")
    text, history = _text(), _runs().history
    for r in records:
        kind = " (multi-run)" if r.is_campaign else ""
        table.add_row(r.run_id[:8], r.status + kind, text.short(r.model, 28), text.short(r.dataset_path, 28),
                      f"{r.completed_steps}/{r.steps}", "-" if r.final_loss is None else f"{r.final_loss:.4f}",
                      text.seconds_text(history.duration_seconds(r)), r.started_at[:19].replace("T", " "))
    _console().print(table)


@app.command("show-run")
def show_run(
    run_id: str = typer.Argument(..., help="The run id or its first characters."),
    plot: Path = typer.Option(None, "--plot", help="Also write the loss curve to this PNG file."),
    output: Path = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
) -> None:
    """Everything a run recorded: settings, data, status, checkpoints, exports, merges, loss curve."""
    runs = _runs()
    r = runs.get(run_id, output)
    typer.echo(_text().describe(r))
    if plot is not None:
        typer.echo(f"plot: {runs.plot_losses({r.run_id[:8]: r.loss_history}, plot, title=f'run {r.run_id[:8]}')}")


@app.command("diff-runs")
def diff_runs(
    a: str = typer.Argument(..., help="First run id (or prefix)."),
    b: str = typer.Argument(..., help="Second run id (or prefix)."),
    plot: Path = typer.Option(None, "--plot", help="Write both loss curves, overlaid, to this PNG file."),
    output: Path = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
) -> None:
    """Two runs side by side: the settings that differ, the data, and the results."""
    from rich.table import Table

    runs, short = _runs(), _text().short
    d = runs.diff(a, b, output)
    table = Table(title=f"{d.a.run_id[:8]} vs {d.b.run_id[:8]}")
    table.add_column("")
    table.add_column(d.a.run_id[:8], justify="right")
    table.add_column(d.b.run_id[:8], justify="right")
    for key, (va, vb) in d.config.items():
        table.add_row(key, short(json.dumps(va, default=str), 200), short(json.dumps(vb, default=str), 200))
    if not d.config:
        table.add_row("config", "identical", "identical")
    table.add_row("dataset sha256", str(d.a.dataset_hash)[:12], str(d.b.dataset_hash)[:12]
                  + ("" if d.same_dataset else "  (differs)"))
    for key, (va, vb) in d.results.items():
        table.add_row(key, _fmt(va), _fmt(vb))
    _console().print(table)
    if plot is not None:
        path = runs.plot_losses({d.a.run_id[:8]: d.a.loss_history, d.b.run_id[:8]: d.b.loss_history}, plot,
                                title="training loss")
        typer.echo(f"plot: {path}")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


@app.command()
def replay(
    run_id: str = typer.Argument(..., help="The run to train again (id or prefix)."),
    output: Path = typer.Option(None, "--output", "-o", help="Where the new run goes [default: "
                                "<run's output>/replays/<id>-<time>]."),
    history: Path = typer.Option(None, "--history", help="Output directory that holds the original run "
                                 "[default: search every known one]."),
    force: bool = typer.Option(False, "--force", help="Replay even if the dataset file changed."),
) -> None:
    """Train a run again with its own settings and data; the new run links back to it."""
    runs = _runs()
    with TrainingProgress(None) as progress:
        run = runs.replay(run_id, history, new_output=output, force=force, callback=progress.callback())
    original = runs.get(run_id, history)
    same = run.loss_history == original.loss_history
    typer.echo(f"run_id: {run.run_id} (replay of {original.run_id})")
    typer.echo(f"steps: {run.steps}  final loss: {run.final_loss:.4f}  loss history "
               + ("identical to the original" if same else "differs from the original"))
    typer.echo(f"adapter: {run.output_path}")


@app.command("export-runs")
def export_runs(
    format: str = typer.Option("jsonl", "--format", "-f", help="jsonl, csv or json."),
    out: Path = typer.Option(None, "--out", help="Write to this file [default: print]."),
    status: str = typer.Option(None, "--status", help="Only runs with this status."),
    output: Path = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
) -> None:
    """The whole run history, for spreadsheets and scripts."""
    runs = _runs()
    text = runs.export(format, out, output, status=status)
    if out is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {len(runs.list(output, status=status))} runs to {out}")
