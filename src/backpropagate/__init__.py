"""backpropagate: fine-tune an LLM on one GPU in three lines.

    from backpropagate import Trainer
    trainer = Trainer("Qwen/Qwen2.5-7B-Instruct")
    trainer.train("my_data.jsonl", steps=100)

Names are imported lazily so that ``backprop --help`` does not pay for torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Trainer": "backpropagate.trainer",
    "TrainingCallback": "backpropagate.training.callbacks",
    "TrainingRun": "backpropagate.training.callbacks",
    "BackpropagateError": "backpropagate.errors",
    "Settings": "backpropagate.config",
    "RunInterrupted": "backpropagate.training.stop",
    "RunControls": "backpropagate.training.stop",
    "evaluate": "backpropagate.scoring",
    "EvalReport": "backpropagate.scoring",
}

__all__ = ["BackpropagateError", "EvalReport", "RunControls", "RunInterrupted", "Settings", "Trainer",
           "TrainingCallback", "TrainingRun", "__version__", "evaluate"]

if TYPE_CHECKING:
    from .config import Settings
    from .errors import BackpropagateError
    from .scoring import EvalReport, evaluate
    from .trainer import Trainer
    from .training.callbacks import TrainingCallback, TrainingRun
    from .training.stop import RunControls, RunInterrupted


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'backpropagate' has no attribute {name!r}")
