"""Logging: structlog with the run_id bound to every line, console or JSON output, secrets redacted.

Everything this package prints goes through :func:`redact` (see :mod:`backpropagate.redaction`), so a
token pasted into a model id, a URL or an exception message never reaches the terminal or a log file.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

from .redaction import is_redacted, redact, redact_tree

__all__ = ["bound_run", "configure", "get_logger", "is_redacted", "redact", "redact_tree"]


def _redact_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Every value of the line, nested lists and dicts too; a value under a credential key is masked whole."""
    return redact_tree(event)


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() in {"1", "true", "yes", "on"}


_configured = False


def configure(level: str | None = None, json: bool | None = None) -> None:
    """Set up structlog once; environment variables BACKPROPAGATE_LOG_LEVEL / _LOG_JSON win over defaults."""
    global _configured
    level = (level or os.environ.get("BACKPROPAGATE_LOG_LEVEL") or "INFO").upper()
    env_json = _env_flag("BACKPROPAGATE_LOG_JSON")
    use_json = json if json is not None else (env_json if env_json is not None else False)
    renderer: Any = (structlog.processors.JSONRenderer() if use_json
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level, logging.INFO)),
        # Resolve sys.stderr when a logger is made, not once: it may have been replaced since.
        logger_factory=lambda *args: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str = "backpropagate") -> Any:
    if not _configured:
        configure()
    return structlog.get_logger(name)


@contextmanager
def bound_run(run_id: str) -> Iterator[None]:
    """Bind ``run_id`` to every log line emitted inside the block."""
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        yield
