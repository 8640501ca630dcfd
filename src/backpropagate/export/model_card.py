"""The model card (README.md) pushed with an adapter, merged or GGUF folder.

It says what the folder holds and where it came from: the base model, the training run (run_id, steps,
final loss, dataset hash, configuration) when one is known, the LoRA settings, and for GGUF files the
parity figures from ``export_report.json``. Unknown facts are written as "not recorded", never guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomically
from ..logs import redact, redact_tree

RUN_FILE = "training_run.json"
_NOT_RECORDED = "not recorded"


def run_record(run: Any) -> dict[str, Any]:
    """The card-relevant facts of a TrainingRun (or a dict of the same fields)."""
    if run is None:
        return {}
    data = run if isinstance(run, dict) else dict(vars(run))
    keep = ("run_id", "steps", "final_loss", "dataset_format", "tokens_trained", "samples_seen", "config",
            "dataset_hash", "dataset_fingerprint", "duration_seconds")
    return {k: data[k] for k in keep if data.get(k) is not None}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _is_hub_id(name: str | None) -> bool:
    if not name:
        return False
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and "\\" not in name


def folder_kind(folder: Path) -> str:
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if any(folder.glob("*.gguf")):
        return "gguf"
    if (folder / "config.json").is_file():
        return "merged"
    return "unknown"


def build_card(folder: Path, run: Any = None) -> tuple[str, dict[str, Any]]:
    """(README text, metadata) for ``folder``; ``run`` overrides a training_run.json in the folder."""
    from huggingface_hub import ModelCardData

    kind = folder_kind(folder)
    record = run_record(run) or _read_json(folder / RUN_FILE)
    adapter = _read_json(folder / "adapter_config.json")
    report = _read_json(folder / "export_report.json")
    config = record.get("config") or {}
    base = (adapter.get("base_model_name_or_path") or (config.get("model") or {}).get("name")
            or _read_json(folder / "config.json").get("_name_or_path"))
    tags = ["backpropagate", {"adapter": "lora", "gguf": "gguf", "merged": "fine-tuned"}.get(kind, "model")]
    data = ModelCardData(base_model=base if _is_hub_id(base) else None, tags=tags,
                         library_name={"adapter": "peft", "merged": "transformers"}.get(kind))
    dataset_hash = record.get("dataset_hash") or record.get("dataset_fingerprint") or _NOT_RECORDED
    loss = record.get("final_loss")
    lines = [
        f"# {folder.name}", "",
        f"A {'LoRA adapter' if kind == 'adapter' else 'GGUF export' if kind == 'gguf' else 'fine-tuned model'} "
        "trained with [backpropagate](https://pypi.org/project/backpropagate/).", "",
        "| | |", "|---|---|",
        f"| base model | {base or _NOT_RECORDED} |",
        f"| run_id | {record.get('run_id', _NOT_RECORDED)} |",
        f"| steps | {record.get('steps', _NOT_RECORDED)} |",
        f"| final loss | {f'{loss:.4f}' if isinstance(loss, int | float) else _NOT_RECORDED} |",
        f"| dataset hash | {dataset_hash} |",
        f"| dataset format | {record.get('dataset_format', _NOT_RECORDED)} |",
    ]
    if adapter:
        lines.append(f"| LoRA | r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}, "
                     f"targets={adapter.get('target_modules')} |")
    if report:
        lines.append(f"| GGUF parity | {report.get('quantization')}: top-1 agreement "
                     f"{report.get('agreement', 0):.2%}, {'passed' if report.get('passed') else 'FAILED'} |")
    if config:
        lines += ["", "## Training configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True,
                                                                              default=str), "```"]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
    # Pushed to the Hub: a token in a path of an older run's record must not travel with it.
    return redact(text), {"kind": kind, "base_model": redact(base) if base else base,
                          **{k: record.get(k) for k in ("run_id", "final_loss")}}


def write_run_record(folder: Path, run: Any) -> None:
    """Keep the run's facts beside an export so a later ``backprop push`` can describe it."""
    record = redact_tree(run_record(run))
    if record:

        write_text_atomically(folder / RUN_FILE, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
