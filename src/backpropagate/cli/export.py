"""``backprop export`` and ``backprop push``: thin shells over ``backpropagate.export``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import BackpropagateError
from . import app

_QUANTS = "q4_k_m, q5_k_m, q6_k, q4_0, q8_0, f16, bf16, f32"


@app.command()
def export(
    source: Path = typer.Argument(..., help="Adapter folder (what trainer.save writes) or model folder."),
    format: str = typer.Option("gguf", "--format", "-f", help="gguf, gguf-adapter or merged."),
    quantization: str = typer.Option("q4_k_m", "--quantization", "-q", help=f"GGUF type: {_QUANTS}."),
    output: Path = typer.Option(None, "--output", "-o",
                                help="Output .gguf file or folder [default: <source>-gguf / <source>-merged]."),
    base: str = typer.Option(None, "--base", help="Base model folder or hub id [default: the adapter's own]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the llama.cpp parity check."),
    ollama: bool = typer.Option(False, "--ollama", help="Register the GGUF with the Ollama server (OLLAMA_HOST)."),
    ollama_name: str = typer.Option(None, "--ollama-name", help="Model name in Ollama (needed with --ollama)."),
    system: str = typer.Option(None, "--system", help="Default system prompt written to the Modelfile."),
    num_ctx: int = typer.Option(None, "--num-ctx", help="Modelfile num_ctx [default: min(context, 4096)]."),
) -> None:
    """Export to GGUF (verified against the PyTorch model), a LoRA GGUF, or merged weights."""
    from transformers.utils import logging as hf_logging

    from ..export import export_model  # lazy: torch, gguf

    hf_logging.disable_progress_bar()
    if ollama and not ollama_name:
        raise BackpropagateError("INPUT_INVALID_VALUE", "--ollama needs --ollama-name NAME.")
    result = export_model(source, format, quantization=quantization, output=output, base=base,
                          overwrite=overwrite, verify=not no_verify, ollama=ollama, ollama_name=ollama_name,
                          system=system, num_ctx=num_ctx)
    typer.echo(result.summary())


@app.command()
def push(
    folder: Path = typer.Argument(..., help="Adapter, merged-model or GGUF folder to upload."),
    repo: str = typer.Option(..., "--repo", help="Hub repo id, e.g. your-name/my-model."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
) -> None:
    """Upload a folder to the Hugging Face Hub with a generated model card (token: HF_TOKEN or `hf auth login`)."""
    from ..export import push_folder  # lazy: torch, gguf

    result = push_folder(folder, repo, private=private)
    typer.echo(f"pushed {len(result.files)} files to {result.repo_id}{' (private)' if private else ''}")
    typer.echo(f"commit: {result.url}")
