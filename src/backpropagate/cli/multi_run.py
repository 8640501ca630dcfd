"""``backprop multi-run``: a continual-learning campaign (SLAO) over several datasets or chunks of one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from . import app
from .help import PanelCommand
from .options import with_trainer_options
from .progress import TrainingProgress
from .train import interruptible

if TYPE_CHECKING:
    from ..continual.campaign import MultiRunResult


@app.command("multi-run", cls=PanelCommand)
@with_trainer_options(lambda spec: spec.campaign)
def multi_run(
    data: list[str] = typer.Option(None, "--data", "-d", help="A dataset per run (repeat --data), or one dataset "
                                   "cut into --runs chunks of --samples rows [default with --resume: the "
                                   "campaign's own]."),
    runs: int = typer.Option(None, "--runs", help="Number of runs [default: one per --data, else 5]."),
    steps: int = typer.Option(None, "--steps", "-s", help="Optimizer steps per run [default: 100]."),
    samples: int = typer.Option(None, "--samples", help="Rows per run [default: all rows, split evenly]."),
    merge_mode: str = typer.Option(None, "--merge-mode", help="slao (merge runs), or none (sequential LoRA) "
                                   "[default: slao]."),
    eval_fraction: float = typer.Option(None, "--eval-fraction", help="Share of each run's rows held out to "
                                        "measure forgetting, in (0, 0.5] [default: 0.1]."),
    lambda_schedule: str = typer.Option(None, "--lambda", help="SLAO merge weight: 1/sqrt(i) (the paper's), "
                                        "1/i, or a number in (0, 1] [default: 1/sqrt(i)]."),
    experimental: bool = typer.Option(False, "--experimental", help="Allow DoRA / PiSSA / LoftQ adapters, which "
                                      "the SLAO paper does not cover (flagged in the report)."),
    resume: str = typer.Option(None, "--resume", help="Continue this campaign (id or unique prefix) in the run it "
                               "stopped in; see also `backprop resume`."),
    force: bool = typer.Option(False, "--force", help="With --resume: continue even if data or settings differ."),
    **options: Any,
) -> None:
    """Train several runs one after another and merge them with SLAO; print the forgetting report."""
    from ..trainer import Trainer  # lazy: torch

    trainer = Trainer(**options)
    dataset = (data[0] if len(data) == 1 else list(data)) if data else None
    with interruptible(trainer), TrainingProgress(None) as progress:
        result = trainer.multi_run(dataset, num_runs=runs, steps_per_run=steps, samples_per_run=samples,
                                   merge_mode=merge_mode, eval_fraction=eval_fraction,
                                   lambda_schedule=_schedule(lambda_schedule), experimental=experimental,
                                   resume=resume, force=force, callback=progress.callback())
    print_result(result)


def _schedule(text: str | None) -> str | float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def print_result(result: MultiRunResult) -> None:
    typer.echo(result.report.to_text())
    typer.echo(f"run_id: {result.run_id}")
    typer.echo(f"runs: {result.num_runs} x {result.steps_per_run} steps  merge: {result.merge_mode}  "
               f"final loss: {result.final_loss:.4f}  {result.duration_seconds:.1f}s")
    typer.echo(f"merged adapter: {result.output_path}")
    if result.forgetting_json:
        typer.echo(f"forgetting report: {result.forgetting_json}"
                   + (f" and {result.forgetting_png}" if result.forgetting_png else ""))
    for note in result.notes:
        typer.echo(f"note: {note}")
