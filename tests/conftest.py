"""Shared fixtures: tiny real models built offline by backpropagate.testing, and the sample datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep tests off the user's caches and settings, and fully offline."""
    os.environ["BACKPROPAGATE_TINY_CACHE"] = str(tmp_path_factory.mktemp("tiny-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    for key in list(os.environ):
        if key.startswith("BACKPROPAGATE_") and key != "BACKPROPAGATE_TINY_CACHE":
            del os.environ[key]


@pytest.fixture(scope="session")
def tiny_llama() -> Path:
    from backpropagate.testing import build_tiny_model

    return build_tiny_model("llama", size="tiny", seed=0)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"sample datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
