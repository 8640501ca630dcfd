"""``backprop plan``: the pre-flight memory estimate, before any weight is downloaded or loaded."""

from __future__ import annotations

import json
from typing import Any

import typer

from . import app
from .help import PanelCommand
from .options import with_trainer_options

# The settings a memory plan depends on that `backprop plan` takes as flags (a preset name as --model works offline).
PLAN_OPTIONS = frozenset({"model", "lora_preset", "lora_r", "target_modules", "optim", "gradient_checkpointing"})


@app.command(cls=PanelCommand)
@with_trainer_options(lambda spec: spec.arg in PLAN_OPTIONS)
def plan(
    method: str = typer.Option(None, "--method", help="lora (16-bit base), qlora, dora or full [default: what "
                               "the smart defaults choose for the card: LoRA, or QLoRA when 16-bit does not fit]."),
    seq_len: int = typer.Option(None, "--seq-len", help="Tokens per row [default: max_seq_length]."),
    batch_size: int = typer.Option(None, "--batch-size", help="Rows per micro-batch [default: the smart default "
                                   "for the card]."),
    vram: float = typer.Option(None, "--vram", help="Plan for a GPU with this many GB instead of this machine."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    **options: Any,
) -> None:
    """Estimate peak memory of the step the run will use (smart defaults fitted to the card) and whether it fits."""
    from ..trainer import Trainer  # lazy: torch
    from ..training.methods import method_arguments  # lazy: the settings (--help stays light)

    chosen = method_arguments(method) if method else {}
    trainer = Trainer(**options, **chosen)
    result = trainer.plan(seq_len=seq_len, batch_size=batch_size, vram_gb=vram)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.report())
