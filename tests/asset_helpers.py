"""Test material from the registries (``support.assets``), skipping with the reason when absent."""

from __future__ import annotations

from typing import Any

import pytest

from support import assets


def asset_or_skip(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or skip the test when the package behind it cannot be fetched here."""
    try:
        return fn(*args)
    except assets.AssetUnavailable as exc:
        pytest.skip(str(exc))
