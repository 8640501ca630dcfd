"""Real pretrained checkpoints for tests, built from the GGUF files that :mod:`.assets` fetches.

``real_checkpoint("smollm2-135m-instruct")`` is a Hugging Face folder (float32 safetensors, tokenizer,
chat template, generation config) holding SmolLM2-135M-Instruct's real weights: transformers loads the
GGUF and dequantizes it, and the result is saved once under ``assets_root()/checkpoints/<name>``
(written to a temporary folder and renamed, so a crash leaves nothing half-built). The weights are the
dequantized Q4_1 / Q4_K_M values: a real trained network, not bit-identical to the original release.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import assets

#: Bump when the files written for a checkpoint change, so stale copies are rebuilt.
REAL_WEIGHTS_VERSION = 4
MARKER_FILE = "backpropagate_real_weights.json"


@dataclass(frozen=True)
class RealCheckpoint:
    """Where a checkpoint's weights come from, and which real tokenizer folder (if any) replaces the one
    transformers converts from the GGUF."""

    name: str
    gguf: Callable[[], Path]
    tokenizer_family: str


REAL_CHECKPOINTS: dict[str, RealCheckpoint] = {c.name: c for c in (
    RealCheckpoint("smollm2-135m-instruct", assets.smollm2_gguf, "smollm2"),
    RealCheckpoint("gemma-3-270m", assets.gemma3_270m_gguf, "gemma3"),
)}


def _real_tokenizer_dir(family: str) -> Path | None:
    """The real tokenizer folder from :mod:`.real_tokenizers`, where that module knows the family."""
    try:
        from .real_tokenizers import tokenizer_dir
    except ImportError:
        return None
    try:
        return Path(tokenizer_dir(family))
    except (KeyError, ValueError):
        return None


def _load_tokenizer(spec: RealCheckpoint, gguf: Path) -> tuple[Any, str]:
    """The real tokenizer (as the Hugging Face checkpoint ships it), or the one transformers converts from
    the GGUF where no real folder exists; and a note saying which. Gemma 3's real tokenizer has one token
    more than gemma-3-270m's embedding (``<image_soft_token>``), which the export drops like llama.cpp."""
    from transformers import AutoTokenizer

    real_dir = _real_tokenizer_dir(spec.tokenizer_family)
    if real_dir is None:
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), "converted from the GGUF"
    return AutoTokenizer.from_pretrained(real_dir), f"real ({spec.tokenizer_family})"


def _write(spec: RealCheckpoint, folder: Path) -> None:
    """Dequantize the GGUF into an ordinary float32 checkpoint in ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf = spec.gguf()
    tokenizer, tokenizer_note = _load_tokenizer(spec, gguf)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers will not save a model it loaded from GGUF: move the dequantized weights into a plain one
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = spec.name
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    config_path = folder / "config.json"  # the GGUF's general.name is no path to load from
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    saved.pop("_model_name_or_path", None)
    config_path.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    marker = {"version": REAL_WEIGHTS_VERSION, "name": spec.name, "gguf": gguf.name, "tokenizer": tokenizer_note}
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _is_current(folder: Path) -> bool:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("version") == REAL_WEIGHTS_VERSION


def real_checkpoint(name: str) -> Path:
    """The Hugging Face folder of a real pretrained model (``"smollm2-135m-instruct"``, ``"gemma-3-270m"``),
    built on first use; raises ``assets.AssetUnavailable`` where the GGUF cannot be fetched."""
    if name not in REAL_CHECKPOINTS:
        raise KeyError(f"unknown real checkpoint {name!r}; choose one of {', '.join(REAL_CHECKPOINTS)}")
    spec = REAL_CHECKPOINTS[name]
    return assets.build_once(assets.assets_root() / "checkpoints" / name, lambda tmp: _write(spec, tmp),
                             is_done=_is_current)
