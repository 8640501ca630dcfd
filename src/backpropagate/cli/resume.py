"""``backprop resume``: finish an interrupted run from its last checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app


@app.command()
def resume(
    run_id: str = typer.Argument(..., help="The run id, or its first characters (see runs.db)."),
    output: Path = typer.Option(None, "--output", "-o", help="The run's output directory [default: ./output]."),
    force: bool = typer.Option(False, "--force", help="Continue even if the dataset file or settings changed."),
) -> None:
    """Continue an interrupted run (or multi-run campaign) where it stopped, with its own data and settings."""
    from ..runs.store import RunStore
    from ..trainer import Trainer
    from .progress import TrainingProgress

    trainer = Trainer.from_run(run_id, output)
    if "multi_run" in RunStore.for_output(trainer.output_dir).get(run_id).config:
        from .multi_run import print_result

        with TrainingProgress(None) as progress:
            campaign = trainer.multi_run(resume=run_id, force=force, callback=progress.callback())
        print_result(campaign)
        return
    with TrainingProgress(None) as progress:
        run = trainer.train(resume=run_id, force=force, callback=progress.callback())
    typer.echo(f"run_id: {run.run_id}")
    typer.echo(f"steps: {run.steps}  final loss: {run.final_loss:.4f}  "
               f"(first {run.loss_history[0]:.4f})  {run.duration_seconds:.1f}s")
    typer.echo(f"adapter: {run.output_path}")

