"""The ``backprop`` command: a thin Typer shell over the Python API.

At start-up it imports typer and the option catalog (plain data), never pydantic, structlog, torch or
gradio: each command imports those when it runs, so ``backprop --help`` stays fast
(tests/test_cli_imports.py lists what it may import). Errors print as ``[CODE]: message`` plus a hint, without a traceback
unless ``--verbose`` or ``BACKPROPAGATE_DEBUG=1``.
"""

from __future__ import annotations

import sys

import typer

from .. import __version__
from ..errors import CATALOG, BackpropagateError
from ..redaction import redact

app = typer.Typer(
    name="backprop",
    help="Fine-tune an LLM on one GPU, survive crashes, ship it to GGUF/Ollama.",
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"verbose": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"backpropagate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _state["verbose"] = verbose


def _debug() -> bool:
    from ..config import general_settings  # lazy: pydantic-settings, only on an error (--help stays light)

    try:
        return _state["verbose"] or general_settings().debug
    except BackpropagateError:
        return _state["verbose"]


def _report(code: str, message: str, hint: str) -> None:
    sys.stderr.write(redact(f"[{code}]: {message}\n"))
    if hint:
        sys.stderr.write(redact(f"hint: {hint}\n"))


def register_commands() -> None:
    """Import every command module; each registers its commands on ``app`` when imported."""
    # after `app` exists: each command module registers on it
    from . import chat, data, evaluate, export, info, multi_run, plan, resume, runs, train, ui  # noqa: F401


def main() -> None:
    """Console-script entry point."""
    register_commands()
    try:
        code = app(standalone_mode=False)  # usage errors come back here, to be printed like every other
    except typer.TyperException as exc:  # Click's usage errors (typer carries its own Click)
        _usage_error(exc)
    except (KeyboardInterrupt, typer.Abort):
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place every error is turned into a coded line
        _fail(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: Exception) -> None:
    """A command line that does not parse: ``[INPUT_INVALID_USAGE]`` and the command's help hint, exit 2."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as Click would show it
        typer.echo(ctx.get_help() if ctx else "")
        sys.exit(2)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    command = ctx.command_path if ctx is not None else "backprop"
    _report("INPUT_INVALID_USAGE", message, f"See `{command} --help` for the options.")
    sys.exit(2)


def _fail(exc: Exception) -> None:
    if _debug():
        import traceback

        sys.stderr.write(redact(traceback.format_exc()))
    if isinstance(exc, BackpropagateError):
        _report(exc.code, exc.message, exc.hint)
    else:
        _report("RUNTIME_UNEXPECTED", f"{type(exc).__name__}: {exc}", CATALOG["RUNTIME_UNEXPECTED"].hint)
    sys.exit(1)
