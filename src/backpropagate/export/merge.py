"""Adapter -> merged full-precision Hugging Face folder, and what an export source folder is.

The merge always loads the base model *again, in full precision*, from the id or folder the adapter names
(or ``base=``). A base that was trained in 4-bit is therefore never merged into its quantized weights:
those only ever existed in the training process's memory. A base *stored* quantized on disk is refused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_dir_atomically
from ..errors import BackpropagateError
from ..logs import redact
from ..models import peft_wrapping

# PEFT initialisations that rewrite the base weights: an adapter saved without converting them back
# (`path_initial_model_for_weight_conversion`) is only valid on that rewritten base.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda")


@dataclass(frozen=True)
class ExportSource:
    """An export input: a PEFT adapter folder or a full model folder."""
    path: Path
    kind: str  # "adapter" | "model"
    adapter_config: dict[str, Any] | None = None

    @property
    def base_name(self) -> str | None:
        return (self.adapter_config or {}).get("base_model_name_or_path")


def resolve_source(path: str | Path) -> ExportSource:
    """Classify ``path``; INPUT_NOT_A_MODEL_DIR when it is neither kind of folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise BackpropagateError("INPUT_NOT_A_MODEL_DIR", f"{str(path)!r} is not a folder.")
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        try:
            config = json.loads(adapter_config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BackpropagateError("INPUT_NOT_A_MODEL_DIR",
                                     f"{adapter_config} is not valid JSON: {exc}") from exc
        if not any((folder / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
            raise BackpropagateError("INPUT_NOT_A_MODEL_DIR", f"{folder} has adapter_config.json but no weights.")
        return ExportSource(folder.resolve(), "adapter", config)
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if (folder / "config.json").is_file() and has_weights:
        return ExportSource(folder.resolve(), "model")
    raise BackpropagateError(
        "INPUT_NOT_A_MODEL_DIR",
        f"{str(path)!r} is neither a PEFT adapter folder (adapter_config.json) nor a model folder "
        "(config.json + model.safetensors).")


def check_adapter(config: dict[str, Any], *, for_gguf_adapter: bool = False) -> None:
    """Refuse adapters whose meaning depends on more than base + scale * B @ A."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise BackpropagateError("INPUT_UNSUPPORTED_ADAPTER", f"{peft_type} adapters cannot be exported; "
                                 "only LoRA adapters (including DoRA for merges) are supported.")
    init = str(config.get("init_lora_weights", "")).lower()
    if init.startswith(_BASE_REWRITING_INITS):
        raise BackpropagateError(
            "INPUT_UNSUPPORTED_ADAPTER",
            f"the adapter was initialised with {init!r}, which rewrites the base weights, and was saved "
            "without converting it to a plain LoRA; it only works on that rewritten base.",
            hint="Save it with PEFT's path_initial_model_for_weight_conversion, then export again.")
    if for_gguf_adapter:
        if config.get("use_dora"):
            raise BackpropagateError("INPUT_UNSUPPORTED_ADAPTER",
                                     "llama.cpp cannot apply DoRA adapters on top of a base model.")
        if config.get("modules_to_save"):
            raise BackpropagateError("INPUT_UNSUPPORTED_ADAPTER",
                                     f"the adapter fully retrains {config['modules_to_save']}, which a llama.cpp "
                                     "LoRA cannot carry.")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def find_base(source: ExportSource, base: str | Path | None = None) -> str:
    """The base model of an adapter as a loadable id or folder; DEP_BASE_MODEL_NOT_FOUND if there is none."""
    name = str(base) if base is not None else source.base_name
    if not name:
        raise BackpropagateError("DEP_BASE_MODEL_NOT_FOUND",
                                 f"{source.path}/adapter_config.json names no base_model_name_or_path.")
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise BackpropagateError("DEP_BASE_MODEL_NOT_FOUND", f"base model folder {name!r} has no config.json.")
        return str(folder.resolve())
    if _looks_like_path(name):
        raise BackpropagateError("DEP_BASE_MODEL_NOT_FOUND",
                                 f"the adapter's base model folder {name!r} does not exist.")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 - offline, gated or misspelled: all one answer
        detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise BackpropagateError("DEP_BASE_MODEL_NOT_FOUND",
                                 f"the adapter's base model {name!r} cannot be loaded: {detail[:200]}",
                                 retryable=True) from exc
    return name


def local_model_dir(name: str) -> Path:
    """A folder holding ``name``'s files (a hub id is fetched into the Hub cache)."""
    folder = Path(name)
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))
    except Exception as exc:  # noqa: BLE001
        raise BackpropagateError("DEP_BASE_MODEL_NOT_FOUND", f"cannot fetch {name!r}: {redact(str(exc))[:200]}",
                                 retryable=True) from exc


def _reject_quantized_base(name: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    if getattr(config, "quantization_config", None):
        method = dict(config.quantization_config).get("quant_method", "quantized") if isinstance(
            config.quantization_config, dict) else type(config.quantization_config).__name__
        raise BackpropagateError("INPUT_BASE_QUANTIZED",
                                 f"the base model {name!r} is stored {method}; merging into quantized weights "
                                 "would lose the adapter's precision.")
    return config


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, *, base: str | Path | None = None,
                  trust_remote_code: bool = False) -> Path:
    """Merge the adapter into a full-precision copy of its base and save the result to ``output_dir``.

    The folder holds safetensors weights in the base's own dtype, config.json, generation_config.json and
    the adapter's tokenizer (with its chat template). It replaces ``output_dir`` atomically.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(adapter_dir)
    if source.kind != "adapter":
        raise BackpropagateError("INPUT_NOT_A_MODEL_DIR", f"{source.path} is a full model, not an adapter.")
    check_adapter(source.adapter_config or {})
    base_name = find_base(source, base)
    config = _reject_quantized_base(base_name, trust_remote_code)
    saved_dtype = getattr(config, "dtype", None) or torch.float32
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype, torch.float32)
    try:
        model = AutoModelForCausalLM.from_pretrained(base_name, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
        with peft_wrapping():
            merged = PeftModel.from_pretrained(model, str(source.path)).merge_and_unload()
    except Exception as exc:  # noqa: BLE001 - shape mismatches and unreadable weights alike
        raise BackpropagateError("DEP_BASE_MODEL_NOT_FOUND",
                                 f"the adapter does not load on {base_name!r}: {redact(str(exc))[:300]}") from exc
    merged = merged.to(saved_dtype)
    tokenizer_dir = source.path if (source.path / "tokenizer_config.json").is_file() else base_name
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)

    def write(folder: Path) -> None:
        merged.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        generation = Path(base_name) / "generation_config.json"
        if generation.is_file() and not (folder / "generation_config.json").is_file():
            shutil.copyfile(generation, folder / "generation_config.json")

    return write_dir_atomically(Path(output_dir), write)
