"""Shared fixtures: tiny real models built offline by backpropagate.testing, and the sample datasets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


# Set at import, before any test module copies os.environ for the processes it starts.
for _key in list(os.environ):
    if _key.startswith("BACKPROPAGATE_") and _key != "BACKPROPAGATE_ASSETS":  # the download cache stays
        del os.environ[_key]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["BACKPROPAGATE_HOME"] = tempfile.mkdtemp(prefix="backpropagate-home-")  # the user-level run index
os.environ["BACKPROPAGATE_TRAINING__REPORT_TO"] = "none"  # tracker tests ask for theirs explicitly


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep tests off the user's caches and settings, and fully offline."""
    os.environ["BACKPROPAGATE_TINY_CACHE"] = str(tmp_path_factory.mktemp("tiny-cache"))


@pytest.fixture(scope="session")
def tiny_llama() -> Path:
    from backpropagate.testing import build_tiny_model

    return build_tiny_model("llama", size="tiny", seed=0)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"sample datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
