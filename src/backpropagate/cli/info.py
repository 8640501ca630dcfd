"""``backprop info``: environment snapshot for bug reports, and the error-code catalog."""

from __future__ import annotations

import typer

from . import app


@app.command()
def info(
    error_codes: bool = typer.Option(False, "--error-codes", help="List every error code with its hint."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Python, torch, CUDA/GPU/VRAM, OS, installed extras and library versions."""
    import json

    if error_codes:
        from ..errors import CATALOG

        if as_json:
            typer.echo(json.dumps({c: {"summary": s.summary, "hint": s.hint, "retryable": s.retryable}
                                   for c, s in CATALOG.items()}, indent=2))
            return
        for code, spec in CATALOG.items():
            retry = " (retryable)" if spec.retryable else ""
            typer.echo(f"{code}{retry}\n    {spec.summary}\n    hint: {spec.hint}")
        return
    from ..hardware import environment_report

    report = environment_report()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    width = max(len(k) for k in report)
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in value.items())
        typer.echo(f"{key.ljust(width)}  {value}")
