"""Shared fixtures: tiny real models built offline by backpropagate.testing, and the sample datasets."""

from __future__ import annotations

import json
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
# An empty Hugging Face cache: a hub id is "downloaded" only where a test puts it (support.hub_cache).
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="backpropagate-hf-cache-")
os.environ["BACKPROPAGATE_TRAINING__REPORT_TO"] = "none"  # tracker tests ask for theirs explicitly
if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker: two workers share the machine's cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep tests off the user's caches and settings, and fully offline."""
    os.environ["BACKPROPAGATE_TINY_CACHE"] = str(tmp_path_factory.mktemp("tiny-cache"))


@pytest.fixture(scope="session")
def tiny_llama() -> Path:
    from backpropagate.testing import build_tiny_model

    return build_tiny_model("llama", size="tiny", seed=0)


def need_shared_dataset(name: str = "") -> Path:
    """``../shared/datasets/<name>`` beside this clone, or skip: a clone on its own must still pass."""
    path = SHARED_DATASETS / name
    if not path.exists():
        pytest.skip(f"needs ../shared/datasets/{name} (the sample datasets; not present beside this clone: "
                    f"{path})")
    return path


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The sample datasets folder (alpaca, identity, glaive, c4, wiki demos), or skip when it is absent."""
    return need_shared_dataset()


_TOPICS = ["your name", "who made you", "what you can do", "the weather", "a good book", "sorting a list",
           "fine-tuning", "a recipe for bread", "the capital of France", "learning rates", "Python", "LoRA", "sleep"]


@pytest.fixture(scope="session")
def identity_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 91-row Alpaca file made here, shaped like ../shared/datasets/identity.json, for tests that only need
    trainable rows (the UI, a campaign): they run on a clone with nothing beside it."""
    rows = [{"instruction": f"Question {i}: tell me about {_TOPICS[i % len(_TOPICS)]}.", "input": "",
             "output": f"Answer {i}: I am Backprop, a small assistant; about {_TOPICS[(i * 7) % len(_TOPICS)]}, "
                       f"here is what I know, in {i % 5 + 1} short sentences."} for i in range(91)]
    path = tmp_path_factory.mktemp("identity") / "identity.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
