"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) through accelerate's tracker classes.

``report_to`` is "auto" (every tracker whose package is installed), "none", or names. The tracker run is
named after the run_id; the configuration is logged once, then loss, learning rate, tokens/s and GPU
memory every step, and the final metrics at the end. Files stay in the output directory:
``<output>/tensorboard/<run_id>/``, MLflow's local store ``<output>/mlflow.db`` with artifacts in
``<output>/mlruns/`` (unless ``MLFLOW_TRACKING_URI`` says otherwise) and ``<output>/wandb/``. W&B without credentials runs offline,
said once. Only the main process of a multi-process run reports.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BackpropagateError
from .callbacks import TrainingCallback

TRACKERS = ("tensorboard", "mlflow", "wandb")
TRACKING_HINT = 'pip install "backpropagate[tracking]"'
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
PROJECT = "backpropagate"


def parse_report_to(value: str | Sequence[str] | None) -> list[str] | str:
    """Normalize ``report_to``: "auto", [] for "none", or a list of known tracker names."""
    if value is None or value == "auto":
        return "auto"
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if names in ([], ["none"]):
        return []
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise BackpropagateError("INPUT_INVALID_VALUE", f"report_to={value!r} names unknown tracker(s) "
                                 f"{', '.join(unknown)}; choose from auto, none, {', '.join(TRACKERS)}.")
    return names


def _installed(name: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[name]) is not None


def resolve_trackers(value: str | Sequence[str] | None) -> list[str]:
    """The trackers a run reports to; a tracker asked for by name but not installed is DEP_EXTRA_MISSING."""
    parsed = parse_report_to(value)
    if parsed == "auto":
        return [name for name in TRACKERS if _installed(name)]
    missing = [name for name in parsed if not _installed(name)]
    if missing:
        raise BackpropagateError("DEP_EXTRA_MISSING", f"report_to asks for {', '.join(missing)}, which is not "
                                 "installed.", hint=TRACKING_HINT)
    return list(parsed)


def _wandb_has_credentials() -> bool:
    """An API key in the environment, or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


class TrackerHub:
    """The run's open trackers; every method is a no-op when there are none."""

    def __init__(self, trackers: list[Any], names: list[str]) -> None:
        self.trackers, self.names = trackers, names

    @classmethod
    def open(cls, report_to: Any, *, run_id: str, output_dir: Path, config: Mapping[str, Any], log: Any,
             main: bool = True) -> TrackerHub:
        names = resolve_trackers(report_to) if main else []
        trackers, started = [], []
        for name in names:
            try:
                trackers.append(_start(name, run_id, Path(output_dir), log))
                started.append(name)
            except Exception as exc:  # noqa: BLE001 - a tracker that cannot start costs its metrics, not the run
                log.warning("tracker_unavailable", tracker=name, error=f"{type(exc).__name__}: {exc}"[:300])
        hub = cls(trackers, started)
        names = started
        hub._each("store_init_configuration", _flat(config))
        if names:
            log.info("trackers", report_to=",".join(names))
        return hub

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for tracker in self.trackers:
            getattr(tracker, method)(*args, **kwargs)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self._each("log", {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}, step=step)

    def callback(self, inner: TrainingCallback) -> TrainingCallback:
        """``inner`` plus a per-step report of loss, learning rate, tokens/s and peak GPU memory."""
        if not self.trackers:
            return inner

        def on_log(metrics: dict[str, Any]) -> None:
            inner.fire("on_log", metrics)
            values: dict[str, Any] = {key: metrics[key] for key in ("loss", "learning_rate", "tokens_per_second") if key in metrics}
            values.update(_gpu_memory())
            if "run" in metrics:
                values["multi_run/run"] = metrics["run"]
            self.log({f"train/{k}": v for k, v in values.items()}, step=int(metrics["step"]))

        def on_evaluate(step: int, metrics: dict[str, float]) -> None:
            inner.fire("on_evaluate", step, metrics)
            self.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)

        return TrainingCallback(on_step=inner.on_step, on_epoch=inner.on_epoch, on_save=inner.on_save,
                                on_complete=inner.on_complete, on_error=inner.on_error, on_log=on_log,
                                on_evaluate=on_evaluate)

    def finish(self, final: Mapping[str, Any] | None = None, step: int | None = None) -> None:
        if final:
            self.log({f"final/{k}": v for k, v in final.items()}, step=step or 0)
        self._each("finish")


def _gpu_memory() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30}


def _start(name: str, run_id: str, output_dir: Path, log: Any) -> Any:
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    output_dir.mkdir(parents=True, exist_ok=True)
    if name == "tensorboard":
        tracker = TensorBoardTracker(run_id, output_dir / "tensorboard")
    elif name == "mlflow":
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):  # MLflow 3 retired the plain-file store: a local SQLite one
            mlflow.set_tracking_uri(f"sqlite:///{(output_dir / 'mlflow.db').resolve()}")
        tracker = MLflowTracker(experiment_name=PROJECT, run_name=run_id,
                                logging_dir=(output_dir / "mlruns").resolve().as_uri())
    else:
        kwargs: dict[str, Any] = {"name": run_id, "id": run_id, "dir": str(output_dir)}
        if not _wandb_has_credentials():
            kwargs["mode"] = "offline"
            log.warning("wandb_offline", reason="no W&B credentials (WANDB_API_KEY or `wandb login`); the run is "
                        "kept offline in <output>/wandb, `wandb sync` uploads it later")
        tracker = WandBTracker(PROJECT, **kwargs)
    tracker.start()
    return tracker
