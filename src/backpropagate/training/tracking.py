"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) through accelerate's tracker classes.

``report_to`` is "auto", "none", or names. "auto" turns a tracker on only where the user set it up, so an
installed package alone never starts a cloud run: TensorBoard (local files) when installed, MLflow when
``MLFLOW_TRACKING_URI`` is set, W&B when ``WANDB_API_KEY`` or ``WANDB_MODE`` is set or a netrc holds a
login for api.wandb.ai; the choice and its reasons are logged once (``trackers``). The tracker run is
named after the run_id; the configuration is logged once, then loss, learning rate, tokens/s and GPU
memory every step, and the final metrics at the end. Files stay in the output directory:
``<output>/tensorboard/<run_id>/``, MLflow's local store ``<output>/mlflow.db`` with artifacts in
``<output>/mlruns/`` (unless ``MLFLOW_TRACKING_URI`` says otherwise) and ``<output>/wandb/``. W&B without credentials runs offline,
said once. Only the main process of a multi-process run reports.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import TRACKERS, parse_report_to
from ..errors import BackpropagateError
from .callbacks import TrainingCallback

TRACKING_HINT = 'pip install "backpropagate[tracking]"'
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
PROJECT = "backpropagate"


def _installed(name: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[name]) is not None


def resolve_trackers(value: str | Sequence[str] | None) -> list[str]:
    """The trackers a run reports to; a tracker asked for by name but not installed is DEP_EXTRA_MISSING."""
    return choose_trackers(value)[0]


def choose_trackers(value: str | Sequence[str] | None) -> tuple[list[str], str | None]:
    """The trackers a run reports to, and for "auto" why each one is on or off (None for explicit names)."""
    parsed = parse_report_to(value)
    if parsed == "auto":
        reasons = {name: _auto_reason(name) for name in TRACKERS}
        chosen = [name for name, (on, _) in reasons.items() if on]
        return chosen, "; ".join(f"{name}: {why}" for name, (_, why) in reasons.items())
    missing = [name for name in parsed if not _installed(name)]
    if missing:
        raise BackpropagateError("DEP_EXTRA_MISSING", f"report_to asks for {', '.join(missing)}, which is not "
                                 "installed.", hint=TRACKING_HINT)
    return list(parsed), None


def _auto_reason(name: str) -> tuple[bool, str]:
    """Whether "auto" turns ``name`` on, and why: installed is enough for local TensorBoard files only."""
    if not _installed(name):
        return False, "not installed"
    if name == "tensorboard":
        return True, "installed"
    if name == "mlflow":
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return True, "MLFLOW_TRACKING_URI is set"
        return False, "not configured (set MLFLOW_TRACKING_URI)"
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        if os.environ.get(var):
            return True, f"{var} is set"
    if _wandb_netrc_login():
        return True, "netrc has a login for api.wandb.ai"
    return False, "not configured (set WANDB_API_KEY or WANDB_MODE, or wandb login)"


def _wandb_netrc_login() -> bool:
    """A `wandb login` entry in the netrc W&B reads ($NETRC, else ~/.netrc); the secret is never read out."""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb_has_credentials() -> bool:
    """An API key in the environment, or a `wandb login` entry in the netrc."""
    return bool(os.environ.get("WANDB_API_KEY")) or _wandb_netrc_login()


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
        names, reasons = choose_trackers(report_to) if main else ([], None)
        trackers, started = [], []
        for name in names:
            try:
                trackers.append(_start(name, run_id, Path(output_dir), log))
                started.append(name)
            except Exception as exc:  # noqa: BLE001 - a tracker that cannot start costs its metrics, not the run
                log.warning("tracker_unavailable", tracker=name, error=f"{type(exc).__name__}: {exc}"[:300])
        hub = cls(trackers, started)
        hub.store_config(config)
        if reasons is not None:
            log.info("trackers", report_to=",".join(started) or "none", reasons=reasons)
        elif started:
            log.info("trackers", report_to=",".join(started))
        return hub

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for tracker in self.trackers:
            getattr(tracker, method)(*args, **kwargs)

    def store_config(self, config: Mapping[str, Any]) -> None:
        """Give every tracker the run's settings, flattened."""
        self._each("store_init_configuration", _flat(config))

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

        # MLflow 3 retired the plain-file store: a local SQLite one unless the env names a store. Set either
        # way, as an earlier run in this process may have set the global URI.
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")
                                or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}")
        tracker = MLflowTracker(experiment_name=PROJECT, run_name=run_id,
                                logging_dir=(output_dir / "mlruns").resolve().as_uri())
    else:
        kwargs: dict[str, Any] = {"name": run_id, "id": run_id, "dir": str(output_dir)}
        if os.environ.get("WANDB_MODE"):  # the user's choice, passed on: wandb reads its env once per process
            kwargs["mode"] = os.environ["WANDB_MODE"]
        elif not _wandb_has_credentials():
            kwargs["mode"] = "offline"
            log.warning("wandb_offline", reason="no W&B credentials (WANDB_API_KEY or `wandb login`); the run is "
                        "kept offline in <output>/wandb, `wandb sync` uploads it later")
        tracker = WandBTracker(PROJECT, **kwargs)
    tracker.start()
    return tracker
