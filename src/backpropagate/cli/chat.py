"""``backprop chat``: talk to a saved adapter, a full model folder or an exported GGUF (``backpropagate.chat``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from . import app

_HELP_LINE = "/reset starts the conversation again; /exit or Ctrl-D ends it."


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command("chat")
def chat_command(
    source: Path = typer.Argument(..., help="Adapter folder (./output/lora), full model folder, or a .gguf file."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="Answer this message and exit; repeat the "
                                     "option for a scripted conversation [default: chat interactively]."),
    system: str = typer.Option(None, "--system", help="System prompt for the conversation."),
    compare_base: bool = typer.Option(False, "--compare-base", help="Answer each message with the base model "
                                      "(adapter off) too, before the tuned one."),
    gguf: bool = typer.Option(False, "--gguf", help="SOURCE is a GGUF (or a folder holding one): run it in "
                              "llama.cpp, as Ollama would [default: on for a .gguf file]."),
    base: str = typer.Option(None, "--base", help="Base model folder or hub id [default: the adapter's own]."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 answers greedily (the same every time); "
                                      "higher samples more freely."),
) -> None:
    """Chat with a trained model, streaming its answers; --compare-base shows the base model's answer too."""
    from transformers.utils import logging as hf_logging

    from ..chat import ChatSession  # lazy: torch

    hf_logging.disable_progress_bar()
    session = ChatSession.open(source, base=base, gguf=gguf, system=system, max_new_tokens=max_new_tokens,
                               temperature=temperature)
    try:
        if compare_base:
            session.require_base()  # before anything is asked
        if prompt:
            for message in prompt:
                _answer(session, message, compare_base)
        else:
            _interactive(session, source, compare_base)
    finally:
        session.close()


def _stream() -> Callable[[str], None]:
    """A writer for one streamed answer: its leading whitespace dropped, as the returned answer's is."""
    started = False

    def write(text: str) -> None:
        nonlocal started
        text = text if started else text.lstrip()
        started = started or bool(text)
        if text:
            _write(text)

    return write


def _answer(session: Any, message: str, compare_base: bool) -> None:
    if compare_base:
        _write("base:  ")
        session.ask_base(message, on_text=_stream())
        _write("\ntuned: ")
    session.ask(message, on_text=_stream())
    _write("\n")


def _interactive(session: Any, source: Path, compare_base: bool) -> None:
    kind = "GGUF" if session.gguf is not None else ("adapter" if session.can_compare else "model")
    typer.echo(f"chatting with {source} ({kind}). {_HELP_LINE}", err=True)
    while True:
        try:
            message = input("you> ")
        except EOFError:
            _write("\n")
            return
        command = message.strip()
        if command in {"/exit", "/quit"}:
            return
        if command == "/reset":
            session.reset()
            typer.echo("(conversation cleared)", err=True)
        elif command:
            _answer(session, message, compare_base)
