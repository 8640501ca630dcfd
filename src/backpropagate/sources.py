"""What a run reads, checked before anything heavy loads: the data files exist and can be read, and the model
is a folder that exists or a hub id in the cache or on a reachable Hub. ``Trainer.train`` / ``multi_run`` call
it first; ``backprop train`` calls it before it even imports torch, so a typo fails in about a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import resolve_settings
from .data.load import check_source
from .models import check_model_source
from .redaction import check_model_id


def check_sources(model_name: str | None, *datasets: Any) -> None:
    """Local files first (the model's check may ask the Hub; None: no model to check); coded errors, nothing
    written."""
    for data in datasets:
        if isinstance(data, str | Path):
            check_source(data)
    if model_name is not None:
        check_model_source(model_name)


def check_run_sources(options: dict[str, Any], *datasets: Any) -> None:
    """What the Trainer checks first, without importing it: ``options`` (Trainer arguments) resolve to valid
    settings, the model id carries no credential, then :func:`check_sources`."""
    name = resolve_settings(**options).model.name
    check_model_id(name)
    check_sources(name, *datasets)
