"""``backprop plan``: the pre-flight memory estimate, before any weight is downloaded or loaded."""

from __future__ import annotations

import typer

from ..option_docs import OPTION_DOCS as DOC
from . import app


@app.command()
def plan(
    model: str = typer.Option(None, "--model", "-m", help=DOC["model"] + " A preset name (`backprop info "
                              "--presets`) or a local folder works offline [default: Qwen/Qwen2.5-7B-Instruct]."),
    method: str = typer.Option(None, "--method", help="lora (16-bit base), qlora, dora or full [default: what "
                               "the smart defaults choose for the card: LoRA, or QLoRA when 16-bit does not fit]."),
    seq_len: int = typer.Option(None, "--seq-len", help="Tokens per row [default: max_seq_length, 2048]."),
    batch_size: int = typer.Option(None, "--batch-size", help="Rows per micro-batch [default: the smart default "
                                   "for the card]."),
    vram: float = typer.Option(None, "--vram", help="Plan for a GPU with this many GB instead of this machine."),
    lora_preset: str = typer.Option(None, help=DOC["lora_preset"] + " [default: quality]"),
    lora_r: int = typer.Option(None, help=DOC["lora_r"]),
    target_modules: str = typer.Option(None, help=DOC["target_modules"] + " Comma-separated names."),
    optim: str = typer.Option(None, "--optim", help=DOC["optim"] + " [default: auto]"),
    gradient_checkpointing: str = typer.Option(None, help="on, off or auto [default: auto]."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Estimate peak memory of the step the run will use (smart defaults fitted to the card) and whether it fits."""
    import json

    from ..trainer import Trainer
    from ..training.methods import method_arguments
    from .train import _on_off_auto

    trainer = Trainer(model, lora_preset=lora_preset, lora_r=lora_r, target_modules=target_modules, optim=optim,
                      gradient_checkpointing=_on_off_auto(gradient_checkpointing),
                      **(method_arguments(method) if method else {}))
    result = trainer.plan(seq_len=seq_len, batch_size=batch_size, vram_gb=vram)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.report())
