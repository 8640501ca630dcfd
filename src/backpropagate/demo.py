"""``backprop demo``: the whole loop offline in a few minutes on a laptop CPU.

Builds the hidden-256 tiny llama from :mod:`backpropagate.testing`, fine-tunes a LoRA adapter on the
bundled quickstart conversations until it has learned them, saves it, and asks one of the training
questions, so a user sees training change what the model says. With the `export` extra it then exports a
q4_k_m GGUF (parity-checked against the PyTorch model) and asks llama.cpp the same question.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .export.run_gguf import chat_with_gguf
from .testing import build_tiny_model
from .trainer import Trainer
from .training.callbacks import TrainingCallback, TrainingRun

DEMO_STEPS = 100


@dataclass(frozen=True)
class DemoResult:
    run: TrainingRun
    question: str
    expected: str
    answer: str
    gguf: Any = None  # export.ExportResult of the q4_k_m GGUF, when the export extra is installed
    gguf_answer: str | None = None  # the same question answered by llama.cpp from that GGUF

    @property
    def matches(self) -> bool:
        return self.answer.strip() == self.expected.strip()


def quickstart_path() -> Path:
    return Path(str(resources.files("backpropagate") / "resources" / "quickstart.jsonl"))


def run_demo(output_dir: str | Path = "./output/demo", *, steps: int | None = None,
             callback: TrainingCallback | None = None,
             on_start: Callable[[int], object] | None = None,
             report_to: str | list[str] | None = None) -> DemoResult:
    """Train, chat and (with the export extra) export. No experiment tracker reports unless ``report_to``
    or the environment (BACKPROPAGATE_TRAINING__REPORT_TO) names one: a first run should not open W&B."""

    steps = steps or DEMO_STEPS
    if on_start is not None:
        on_start(steps)
    output_dir = Path(output_dir)
    base = build_tiny_model("llama", size="small", seed=0)
    data = quickstart_path()
    first = json.loads(data.read_text(encoding="utf-8").splitlines()[0])["conversations"]
    trainer = Trainer(str(base), lora_r=32, lora_alpha=64, lora_dropout=0.0, learning_rate=3e-3,
                      batch_size=1, gradient_accumulation=1, max_seq_length=512, warmup_ratio=0.05,
                      output_dir=output_dir, seed=0, report_to=report_to)
    if trainer.settings.source("report_to") == "default":
        trainer.settings.training.report_to = "none"
    run = trainer.train(str(data), steps=steps, callback=callback)
    answer = trainer.chat(first[0]["value"], max_new_tokens=32)
    gguf, gguf_answer = _export_and_chat(trainer, first[0]["value"])
    return DemoResult(run=run, question=first[0]["value"], expected=first[1]["value"], answer=answer,
                      gguf=gguf, gguf_answer=gguf_answer)


def export_available() -> bool:
    """Whether the `export` extra (gguf + llama-cpp-python) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("gguf", "llama_cpp"))


def _export_and_chat(trainer: Any, question: str) -> tuple[Any, str | None]:
    """Export a verified q4_k_m GGUF and ask llama.cpp the same question (skipped without the extra)."""
    if not export_available():
        return None, None

    result = trainer.export("gguf", quantization="q4_k_m", overwrite=True)
    return result, chat_with_gguf(result.path, question, max_tokens=32)
