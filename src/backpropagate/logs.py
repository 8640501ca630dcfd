"""Logging: structlog with the run_id bound to every line, console or JSON output, secrets redacted.

Everything this package prints goes through :func:`redact` (see :mod:`backpropagate.redaction`), so a
token pasted into a model id, a URL or an exception message never reaches the terminal or a log file.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

from .config import GeneralSettings, general_settings
from .errors import BackpropagateError
from .redaction import is_redacted, redact, redact_tree

__all__ = ["bound_run", "configure", "get_logger", "is_redacted", "redact", "redact_tree"]


def _redact_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Every value of the line, nested lists and dicts too; a value under a credential key is masked whole."""
    return redact_tree(event)


_configured = False


def configure(level: str | None = None, json: bool | None = None) -> None:
    """Set up structlog; unset arguments come from the settings (BACKPROPAGATE_LOG_LEVEL / _LOG_JSON).

    A bad value there falls back to the defaults here: the logs must work to report it, and the run's
    settings refuse it with INPUT_CONFIG_INVALID.
    """
    global _configured
    try:
        general = general_settings()
    except BackpropagateError:
        general = GeneralSettings.model_construct(log_level="INFO", log_json=None, debug=False)
    level = (level or general.log_level).upper()
    use_json = bool(general.log_json) if json is None else json
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
