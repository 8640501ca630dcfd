"""``backprop resume``: finish an interrupted run from its last checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .multi_run import print_result
from .progress import TrainingProgress
from .train import interruptible, print_run


@app.command()
def resume(
    run_id: str = typer.Argument(..., help="The run id, or its first characters (see runs.db)."),
    output: Path = typer.Option(None, "--output", "-o", help="The run's output directory [default: ./output]."),
    force: bool = typer.Option(False, "--force", help="Continue even if the dataset file or settings changed."),
    data: str = typer.Option(None, "--data", "-d", help="The run's dataset, when its recorded path cannot be "
                             "used (it held a credential, so the history keeps it redacted) [default: the run's own]."),
    model: str = typer.Option(None, "--model", "-m", help="The run's base model, when its recorded name cannot "
                              "be used (it held a credential) [default: the run's own]."),
) -> None:
    """Continue an interrupted run (or multi-run campaign) where it stopped, with its own data and settings."""
    from .. import runs  # lazy: pydantic-settings, structlog (--help stays light)

    resumption = runs.prepare_resume(run_id, output, model=model)
    if resumption.is_campaign:
        with interruptible(resumption.trainer), TrainingProgress(None) as progress:
            campaign = resumption.run(data, force=force, callback=progress.callback())
        print_result(campaign)
        return
    with interruptible(resumption.trainer), TrainingProgress(None) as progress:
        run = resumption.run(data, force=force, callback=progress.callback())
    print_run(run)

