"""``backprop train`` and ``backprop demo``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import typer

from ..errors import check_count
from . import app
from .help import PanelCommand
from .launch import launch
from .options import with_trainer_options
from .progress import TrainingProgress


@app.command(cls=PanelCommand)
@with_trainer_options()
def train(
    data: str = typer.Option(..., "--data", "-d", help="Dataset file, save_to_disk folder or hub dataset name.", rich_help_panel="Data"),
    steps: int = typer.Option(None, "--steps", "-s", help="Optimizer steps to train [default: 100; with "
                              "--resume, the run's own].", rich_help_panel="Training"),
    format: str = typer.Option(None, "--format", help="Force the dataset format: sharegpt, alpaca, openai, chatml, text.", rich_help_panel="Data"),
    text_column: str = typer.Option(None, help="Column holding raw or ChatML text [default: text].", rich_help_panel="Data"),
    curriculum: bool = typer.Option(False, "--curriculum", help="Train easy to hard without shuffling: the "
                                    "rows' difficulty column (backprop data curriculum), else a length score.", rich_help_panel="Data"),
    eval_data: str = typer.Option(None, "--eval-data", help="Held-out dataset (any supported format) scored every "
                                  "--eval-steps and at the end [default: none; 5 % of a 1000+ row dataset].", rich_help_panel="Evaluation"),
    eval_fraction: float = typer.Option(None, "--eval-fraction", help="Hold out this share, in (0, 0.5], of the "
                                        "rows that occur once in --data (seeded) and score them instead.", rich_help_panel="Evaluation"),
    resume: str = typer.Option(None, "--resume", help="Continue this interrupted run (id or unique prefix) "
                               "from its last checkpoint, bit for bit; see also `backprop resume`.", rich_help_panel="Checkpoints and guards"),
    force: bool = typer.Option(False, "--force", help="With --resume: continue even if the data or settings "
                               "differ from the run's.", rich_help_panel="Checkpoints and guards"),
    nproc: int = typer.Option(None, "--nproc", help="Train on this many processes per machine (torchrun; one "
                              "per GPU, or CPU processes with gloo) [default: 1].", rich_help_panel="Scale"),
    nnodes: int = typer.Option(1, "--nnodes", help="Machines taking part (with --nproc).", rich_help_panel="Scale"),
    node_rank: int = typer.Option(0, "--node-rank", help="This machine's index, 0 .. nnodes-1.", rich_help_panel="Scale"),
    master_addr: str = typer.Option(None, "--master-addr", help="Address of node 0 (with --nnodes > 1).", rich_help_panel="Scale"),
    master_port: int = typer.Option(None, "--master-port", help="Port on node 0 [default: 29500].", rich_help_panel="Scale"),
    fsdp: bool = typer.Option(False, "--fsdp", help="Same as --strategy fsdp: shard weights, gradients and "
                              "optimizer state across the processes (PyTorch FSDP) instead of DDP.", rich_help_panel="Scale"),
    sample_prompt: list[str] = typer.Option(None, "--sample-prompt", help="A prompt the base model answers "
                                            "before training and the tuned one after (greedy, 32 tokens; "
                                            "shown at the end and by show-run). Repeatable.", rich_help_panel="Evaluation"),
    **options: Any,
) -> None:
    """Fine-tune a LoRA adapter on a dataset and save it to <output>/lora (--mode full: <output>/model)."""
    import os
    import sys

    from ..sources import check_run_sources  # lazy: pydantic-settings (--help stays light)

    check_count("steps", steps)
    if resume is None:  # a typo fails before torch is imported (a resume checks the run's own sources)
        check_run_sources(options, data, eval_data)
    from ..trainer import Trainer  # lazy: torch

    trainer = Trainer(**{**options, "strategy": "fsdp" if fsdp else options["strategy"]})
    if nproc is not None:
        from ..training.parallel import check_nproc  # lazy: torch

        check_nproc(nproc)
    launching = (nproc or 1) > 1 or nnodes > 1
    if launching and int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # not yet under a launcher: become one

        raise typer.Exit(launch(sys.argv[1:], nproc=nproc or 1, nnodes=nnodes, node_rank=node_rank,
                                master_addr=master_addr, master_port=master_port))
    with interruptible(trainer), TrainingProgress(steps, enabled=os.environ.get("RANK", "0") == "0") as progress, \
            process_group_closed():
        run = trainer.train(data, steps=steps, callback=progress.callback(), format=format,
                            text_column=text_column, curriculum=curriculum, resume=resume, force=force,
                            eval_data=eval_data, eval_fraction=eval_fraction,
                            sample_prompts=sample_prompt or None)
    if os.environ.get("RANK", "0") == "0":  # the other ranks of a multi-process run: rank 0 reports
        print_run(run)


def print_run(run: Any) -> None:
    """The end-of-run summary (``TrainingRun.summary``)."""
    typer.echo(run.summary())


@contextmanager
def process_group_closed() -> Iterator[None]:
    """Under a launcher, close the process group before the interpreter exits: left to the destructors at
    shutdown, a rank can abort ("terminate called without an active exception") after a finished run."""
    try:
        yield
    finally:
        import sys

        dist = sys.modules.get("torch.distributed")  # only if the run imported it
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def interruptible(trainer: Any) -> Iterator[None]:
    """Ctrl-C stops the run after its current step with a checkpoint (twice: at once); an interrupted run
    prints the command that resumes it and exits 130. Multi-process runs keep the launcher's handling."""
    import os

    from ..training.stop import RunInterrupted, stop_on_sigint  # lazy: torch

    graceful = stop_on_sigint(trainer.stop) if int(os.environ.get("WORLD_SIZE", "1")) <= 1 else nullcontext()
    try:
        with graceful:
            yield
    except RunInterrupted as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(130) from None


@app.command()
def demo(
    output: Path = typer.Option(Path("./output/demo"), "--output", "-o", help="Where the demo writes."),
    steps: int = typer.Option(None, help="Optimizer steps [default: the demo's tuned value]."),
) -> None:
    """Offline end-to-end demo: build a tiny llama, fine-tune it on the quickstart data, chat with it."""
    from ..demo import run_demo  # lazy: torch

    with TrainingProgress(None) as progress:
        result = run_demo(output, steps=steps, callback=progress.callback(), on_start=progress.set_total)
    typer.echo(f"run_id: {result.run.run_id}")
    typer.echo(f"loss: {result.run.loss_history[0]:.3f} -> {result.run.final_loss:.3f} "
               f"in {result.run.steps} steps ({result.run.duration_seconds:.0f}s)")
    typer.echo(f"adapter: {result.run.output_path}")
    typer.echo(f"question: {result.question}")
    typer.echo(f"expected: {result.expected}")
    typer.echo(f"tuned:    {result.answer}")
    typer.echo("match: yes" if result.matches else "match: no")
    if result.gguf is None:
        typer.echo('gguf: skipped (pip install "backpropagate[export]" to export and chat with llama.cpp)')
        return
    report = result.gguf.report
    typer.echo(f"gguf: {result.gguf.path} (q4_k_m; top-1 agreement with PyTorch "
               f"{report.agreement:.1%}, parity {'passed' if report.passed else 'FAILED'})")
    typer.echo(f"llama.cpp: {result.gguf_answer}")
