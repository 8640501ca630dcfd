"""``backprop list-runs | show-run | diff-runs | replay | export-runs``: thin shells over ``backpropagate.runs``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from ..logs import redact, redact_tree
from . import app

_OUTPUT_HELP = "Output directory whose runs.db to read [default: every output directory trained into]."


def _console() -> Any:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=False)
    return console if console.is_terminal else Console(highlight=False, soft_wrap=False, width=160)


def _short(value: Any, width: int = 40) -> str:
    """Redacted first, then cut: a cut token would no longer look like one."""
    text = "-" if value is None else redact(str(value))
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{value:.1f}s"


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

    from .. import runs
    from ..runs.history import duration_seconds

    records = runs.list(output, status=status, limit=limit)
    if as_json:
        typer.echo(json.dumps([redact_tree(asdict(r)) for r in records], indent=2, default=str))
        return
    if not records:
        typer.echo("no runs recorded" + (f" in {output}" if output else ""))
        return
    table = Table(title=f"{len(records)} run(s)")
    for column in ("id", "status", "model", "dataset", "steps", "final loss", "duration", "started"):
        table.add_column(column, justify="right" if column in {"steps", "final loss", "duration"} else "left")
    for r in records:
        kind = " (multi-run)" if r.is_campaign else ""
        table.add_row(r.run_id[:8], r.status + kind, _short(r.model, 28), _short(r.dataset_path, 28),
                      f"{r.completed_steps}/{r.steps}", "-" if r.final_loss is None else f"{r.final_loss:.4f}",
                      _seconds(duration_seconds(r)), r.started_at[:19].replace("T", " "))
    _console().print(table)


@app.command("show-run")
def show_run(
    run_id: str = typer.Argument(..., help="The run id or its first characters."),
    plot: Path = typer.Option(None, "--plot", help="Also write the loss curve to this PNG file."),
    output: Path = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
) -> None:
    """Everything a run recorded: settings, data, status, checkpoints, exports, merges, loss curve."""
    from .. import runs
    from ..runs.history import duration_seconds, flatten

    r = runs.get(run_id, output)
    lines = [f"run {r.run_id}  ({r.status}{', error ' + r.error_code if r.error_code else ''})",
             f"output dir  {r.output_dir}", f"model       {r.model}",
             f"dataset     {r.dataset_path}  sha256 {r.dataset_hash}",
             f"steps       {r.completed_steps}/{r.steps}   final loss "
             f"{'-' if r.final_loss is None else f'{r.final_loss:.4f}'}   duration {_seconds(duration_seconds(r))}",
             f"started     {r.started_at}   ended {r.ended_at or '-'}"]
    if r.error_message:
        lines.append(f"error       {r.error_message}")
    for key in ("replay_of", "tokens_trained", "tokens_per_second"):
        if r.details.get(key) is not None:
            lines.append(f"{key:<11} {r.details[key]}")
    replaced = f"  (replaced by run {r.details['replaced_by'][:8]})" if r.details.get("replaced_by") else ""
    lines.append(f"adapter     {r.output_path or '-'}{replaced}")
    lines += [f"checkpoint  {c}" for c in r.checkpoints]
    lines += [f"export      {e['format']} {e.get('quantization') or ''} {e['path']}"
              + (f"  parity {'passed' if e['parity_passed'] else 'FAILED'} ({e['agreement']:.1%})"
                 if e.get("parity_passed") is not None else "") for e in r.details.get("exports", [])]
    typer.echo(redact("\n".join(lines)))
    typer.echo("\nconfig")
    for key, value in flatten(redact_tree(r.config)).items():
        typer.echo(redact(f"  {key} = {json.dumps(value, default=str)}"))
    _show_campaign(r)
    _show_eval(r)
    if r.details.get("sample_answers"):
        from ..training.answers import answers_text

        typer.echo("\nbefore / after (greedy: base model, then the tuned one)")
        typer.echo(redact(answers_text(r.details["sample_answers"])))
    typer.echo("\nloss")
    typer.echo(runs.terminal_curve(r.loss_history))
    if plot is not None:
        typer.echo(f"plot: {runs.plot_losses({r.run_id[:8]: r.loss_history}, plot, title=f'run {r.run_id[:8]}')}")


def _show_eval(r: Any) -> None:
    """The held-out loss of every evaluation, the best one, and why the run stopped early (if it did)."""
    history = r.details.get("eval_history")
    if not history:
        return
    typer.echo(f"\neval loss   best {r.details['best_eval_loss']:.4f} at step {r.details['best_step']}"
               f"   (held-out rows, mean loss per label token)")
    typer.echo("  " + "   ".join(f"step {step}: {loss:.4f}" for step, loss in history))
    if r.details.get("stop_reason"):
        typer.echo(f"stopped     {r.details['stop_reason']}")
    for key in ("best_adapter_path", "final_adapter_path"):
        if r.details.get(key):
            typer.echo(redact(f"{key.split('_')[0]:<11} {r.details[key]}"))


def _show_campaign(r: Any) -> None:
    if r.details.get("kind") != "multi_run":
        return
    from ..continual.forgetting import ForgettingReport

    typer.echo("\nmulti-run merges")
    for run in r.details.get("runs", []):
        typer.echo(f"  run {run['run']}: {run['train_rows']} rows (+{run['holdout_rows']} held out) of "
                   f"{_short(run['data'], 200)}  final loss {run['final_loss']:.4f}  lambda {run['merge_weight']:.4f}")
    if r.details.get("forgetting", {}).get("accuracy"):
        typer.echo(ForgettingReport.from_json(json.dumps(r.details["forgetting"])).to_text())


@app.command("diff-runs")
def diff_runs(
    a: str = typer.Argument(..., help="First run id (or prefix)."),
    b: str = typer.Argument(..., help="Second run id (or prefix)."),
    plot: Path = typer.Option(None, "--plot", help="Write both loss curves, overlaid, to this PNG file."),
    output: Path = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
) -> None:
    """Two runs side by side: the settings that differ, the data, and the results."""
    from rich.table import Table

    from .. import runs

    d = runs.diff(a, b, output)
    table = Table(title=f"{d.a.run_id[:8]} vs {d.b.run_id[:8]}")
    table.add_column("")
    table.add_column(d.a.run_id[:8], justify="right")
    table.add_column(d.b.run_id[:8], justify="right")
    for key, (va, vb) in d.config.items():
        table.add_row(key, _short(json.dumps(va, default=str), 200), _short(json.dumps(vb, default=str), 200))
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
    from .. import runs
    from .progress import TrainingProgress

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
    from .. import runs

    text = runs.export(format, out, output, status=status)
    if out is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {len(runs.list(output, status=status))} runs to {out}")
