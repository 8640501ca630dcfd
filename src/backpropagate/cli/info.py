"""``backprop info``: environment snapshot for bug reports, and the error-code catalog."""

from __future__ import annotations

import json

import typer

from ..errors import CATALOG
from ..hardware import environment_report
from ..presets import LORA_PRESETS, presets_table
from . import app


@app.command()
def info(
    error_codes: bool = typer.Option(False, "--error-codes", help="List every error code with its hint."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    presets: bool = typer.Option(False, "--presets", help="List the model presets (short names for --model) "
                                 "and the LoRA presets."),
) -> None:
    """Python, torch, CUDA/GPU/VRAM, OS, installed extras and library versions."""
    if presets:
        _print_presets(as_json)
        return
    if error_codes:

        if as_json:
            typer.echo(json.dumps({c: {"summary": s.summary, "hint": s.hint, "retryable": s.retryable}
                                   for c, s in CATALOG.items()}, indent=2))
            return
        for code, spec in CATALOG.items():
            retry = " (retryable)" if spec.retryable else ""
            typer.echo(f"{code}{retry}\n    {spec.summary}\n    hint: {spec.hint}")
        return

    report = environment_report()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    width = max(len(k) for k in report)
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in value.items())
        typer.echo(f"{key.ljust(width)}  {value}")


def _print_presets(as_json: bool) -> None:
    rows = presets_table()
    lora = {name: {"r": p.r, "alpha": p.alpha, "target_modules": p.target_modules, "lr_multiplier": p.lr_multiplier,
                   "why": p.why} for name, p in LORA_PRESETS.items()}
    if as_json:
        typer.echo(json.dumps({"models": rows, "lora": lora}, indent=2))
        return
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in ("name", "hub_id", "license", "template")}
    typer.echo("  ".join(k.ljust(widths[k]) for k in widths) + "  vram")
    for r in rows:
        typer.echo("  ".join(str(r[k]).ljust(widths[k]) for k in widths) + f"  ~{r['vram_gb']} GB")
    typer.echo("\nLoRA presets (--lora-preset):")
    for name, p in LORA_PRESETS.items():
        targets = p.target_modules if isinstance(p.target_modules, str) else ",".join(p.target_modules)
        typer.echo(f"  {name:<8} r={p.r} alpha={p.alpha:g} targets={targets} learning rate x{p.lr_multiplier:g}")
