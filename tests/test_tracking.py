"""Experiment trackers on a real tiny run: TensorBoard event files, an MLflow local store and a W&B offline
run hold the run's metrics under its run_id; bad report_to values are coded errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from backpropagate import Trainer
from backpropagate.demo import quickstart_path
from backpropagate.errors import BackpropagateError
from backpropagate.training import tracking

ARGS = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 1, "max_seq_length": 64,
        "save_steps": 0}


def test_three_trackers_record_the_run(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc login: W&B must go offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    run = Trainer(str(tiny_llama), output_dir=out, report_to=["tensorboard", "mlflow", "wandb"], **ARGS).train(
        str(quickstart_path()), steps=4)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / run.run_id))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses == pytest.approx(run.loss_history, rel=1e-6)
    assert [e.step for e in events.Scalars("train/learning_rate")] == [1, 2, 3, 4]
    assert events.Scalars("final/loss")[0].value == pytest.approx(run.final_loss, rel=1e-6)

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    (found,) = client.search_runs(client.get_experiment_by_name("backpropagate").experiment_id,
                                  filter_string=f"tags.`mlflow.runName` = '{run.run_id}'")
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(run.loss_history, rel=1e-6)
    assert found.data.params["training.seed"] == "42" and found.data.params["lora.r"] == "4"

    offline = list((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob(f"run-{run.run_id}.wandb"))
    err = capsys.readouterr().err
    assert err.count("wandb_offline") == 1


def test_multi_run_logs_each_run_and_the_forgetting_matrix(tiny_llama: Path, tmp_path: Path,
                                                           shared_datasets: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "campaign"
    result = Trainer(str(tiny_llama), output_dir=out, report_to="tensorboard", **ARGS).multi_run(
        shared_datasets / "identity.json", num_runs=2, steps_per_run=2, samples_per_run=10)
    events = EventAccumulator(str(out / "tensorboard" / result.run_id))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.value for e in events.Scalars("train/multi_run/run")] == [1, 1, 2, 2]
    assert events.Scalars("forgetting/aa")[0].value == pytest.approx(result.report.summary()["accuracy"]["aa"])
    assert events.Scalars("forgetting/acc_after_2_task_1")[0].value == pytest.approx(result.report.accuracy[1][0])


def test_report_to_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracking.parse_report_to("none") == [] and tracking.parse_report_to(None) == "auto"
    assert tracking.parse_report_to("tensorboard, mlflow") == ["tensorboard", "mlflow"]
    with pytest.raises(BackpropagateError) as info:
        Trainer("x", report_to="comet")
    assert info.value.code == "INPUT_INVALID_VALUE" and "wandb" in info.value.message
    monkeypatch.setattr(tracking, "_installed", lambda name: name != "mlflow")  # as if the extra were missing
    with pytest.raises(BackpropagateError) as info:
        tracking.resolve_trackers(["mlflow"])
    assert info.value.code == "DEP_EXTRA_MISSING" and info.value.hint == tracking.TRACKING_HINT
    assert tracking.resolve_trackers("auto") == ["tensorboard", "wandb"]
