"""``backprop train`` and ``backprop demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..option_docs import OPTION_DOCS as DOC
from . import app


@app.command()
def train(
    data: str = typer.Option(..., "--data", "-d", help="Dataset file, save_to_disk folder or hub dataset name."),
    model: str = typer.Option(None, "--model", "-m", help=DOC["model"] + " [default: Qwen/Qwen2.5-7B-Instruct]"),
    steps: int = typer.Option(100, "--steps", "-s", help="Optimizer steps to train."),
    output: Path = typer.Option(None, "--output", "-o", help=DOC["output_dir"] + " [default: ./output]"),
    lora_r: int = typer.Option(None, help=DOC["lora_r"] + " [default: 256]"),
    lora_alpha: float = typer.Option(None, help=DOC["lora_alpha"] + " [default: 512]"),
    lora_dropout: float = typer.Option(None, help=DOC["lora_dropout"] + " [default: 0.05]"),
    learning_rate: float = typer.Option(None, "--learning-rate", "--lr", help=DOC["learning_rate"] + " [default: 2e-4]"),
    batch_size: str = typer.Option(None, help=DOC["batch_size"] + " [default: auto]"),
    gradient_accumulation: int = typer.Option(None, help=DOC["gradient_accumulation"] + " [default: 4]"),
    max_seq_length: int = typer.Option(None, help=DOC["max_seq_length"] + " [default: 2048]"),
    train_on_responses: bool = typer.Option(None, "--train-on-responses/--train-on-all",
                                            help=DOC["train_on_responses"] + " [default: responses]"),
    packing: bool = typer.Option(None, "--packing/--no-packing", help=DOC["packing"] + " [default: packing]"),
    seed: int = typer.Option(None, help=DOC["seed"] + " [default: 42]"),
    format: str = typer.Option(None, "--format", help="Force the dataset format: sharegpt, alpaca, openai, chatml, text."),
    text_column: str = typer.Option(None, help="Column holding raw or ChatML text [default: text]."),
    trust_remote_code: bool = typer.Option(None, "--trust-remote-code/--no-trust-remote-code",
                                           help=DOC["trust_remote_code"] + " [default: off]"),
) -> None:
    """Fine-tune a LoRA adapter on a dataset and save it to <output>/lora."""
    from ..trainer import Trainer
    from .progress import TrainingProgress

    trainer = Trainer(
        model, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, learning_rate=learning_rate,
        batch_size=batch_size, gradient_accumulation=gradient_accumulation, max_seq_length=max_seq_length,
        output_dir=output, train_on_responses=train_on_responses, packing=packing, seed=seed,
        trust_remote_code=trust_remote_code)
    with TrainingProgress(steps) as progress:
        run = trainer.train(data, steps=steps, callback=progress.callback(), format=format,
                            text_column=text_column)
    typer.echo(f"run_id: {run.run_id}")
    typer.echo(f"steps: {run.steps}  final loss: {run.final_loss:.4f}  "
               f"(first {run.loss_history[0]:.4f})  {run.duration_seconds:.1f}s")
    typer.echo(f"adapter: {run.output_path}")


@app.command()
def demo(
    output: Path = typer.Option(Path("./output/demo"), "--output", "-o", help="Where the demo writes."),
    steps: int = typer.Option(None, help="Optimizer steps [default: the demo's tuned value]."),
) -> None:
    """Offline end-to-end demo: build a tiny llama, fine-tune it on the quickstart data, chat with it."""
    from ..demo import run_demo
    from .progress import TrainingProgress

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
