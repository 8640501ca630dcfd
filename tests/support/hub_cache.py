"""A model's config.json placed in the Hugging Face cache the tests use (conftest points HF_HUB_CACHE at a
temporary folder), laid out as ``hf download`` leaves it: then a hub id counts as downloaded, as it would on
a user's machine that fetched it once, and a run gets past the model check without a network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from transformers import AutoConfig

from backpropagate.presets import preset_for_hub_id


def cache_hub_config(hub_id: str) -> Path:
    """Write ``hub_id``'s config (a preset's: its real shape) as the cache's ``main`` snapshot; its path."""
    preset = preset_for_hub_id(hub_id)
    assert preset is not None, f"{hub_id} is not a preset: its shape is unknown offline"
    text = AutoConfig.for_model(preset.model_type, **preset.config_kwargs()).to_json_string()
    repo = Path(os.environ["HF_HUB_CACHE"]) / f"models--{hub_id.replace('/', '--')}"
    commit = hashlib.sha1(hub_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text(text, encoding="utf-8")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    return snapshot / "config.json"
