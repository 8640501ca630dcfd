"""Before training: can this model be exported to GGUF, and if not, why?

Reads the config and ``tokenizer.json`` only (no weights), so the answer comes at start-up, from
``backprop plan`` and in the UI, not after hours of training. Model presets are judged from their
pinned architecture and tokenizer kind without any download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..presets import find_model_preset, preset_for_hub_id
from .gguf_arch import arch_spec, check_architecture
from .gguf_tokenizer import check_tokenizer, check_tokenizer_kind


@dataclass(frozen=True)
class GgufSupport:
    """The verdict: ``supported`` is None when it cannot be known yet (a hub id not downloaded)."""

    supported: bool | None
    reason: str

    def line(self) -> str:
        if self.supported:
            return f"GGUF export: supported ({self.reason})"
        if self.supported is None:
            return f"GGUF export: not checked ({self.reason})"
        return f"GGUF export: NOT possible: {self.reason}; `export --format merged` still works"


def _local_dir(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path if (path / "config.json").is_file() else None


def gguf_support(name: str, config: Any = None) -> GgufSupport:
    """Whether the model ``name`` (preset, local folder or hub id) can be exported to GGUF."""

    folder = _local_dir(name)
    preset = None if folder else (find_model_preset(name) or preset_for_hub_id(name))
    if config is None and folder is not None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(folder)
        except Exception as exc:  # noqa: BLE001 - a broken config is reported by the loader itself
            return GgufSupport(False, f"config.json cannot be read ({type(exc).__name__})")
    if config is None and preset is not None:
        from transformers import AutoConfig

        config = AutoConfig.for_model(preset.model_type, **preset.config_kwargs())
        config.architectures = [preset.architecture]
    if config is None:
        return GgufSupport(None, "the model is not downloaded yet; checked when it loads")
    problem = check_architecture(config)
    if problem:
        return GgufSupport(False, problem)
    if folder is not None:
        problem = check_tokenizer(folder)
    elif preset is not None:
        problem = check_tokenizer_kind(preset.tokenizer)
    if problem:
        return GgufSupport(False, problem)
    family = arch_spec(config).family
    return GgufSupport(True, f"{family} architecture, tokenizer checked" if folder else f"{family} preset")
