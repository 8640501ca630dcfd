"""Experiment trackers on a real tiny run: TensorBoard event files, an MLflow local store and a W&B offline
run hold the run's metrics under its run_id; "auto" starts only the trackers the user set up and says why;
bad report_to values are coded errors."""

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
                                                           identity_rows: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "campaign"
    result = Trainer(str(tiny_llama), output_dir=out, report_to="tensorboard", **ARGS).multi_run(
        identity_rows, num_runs=2, steps_per_run=2, samples_per_run=10)
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
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.resolve_trackers("auto") == ["tensorboard", "wandb"]


@pytest.fixture()
def unconfigured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No W&B key, mode or netrc login and no MLflow URI: the machine of someone who only pip-installed them."""
    for name in ("tensorboard", "mlflow", "wandb"):
        pytest.importorskip(name)
    for var in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)  # a W&B run started by mistake would leave ./wandb here
    return tmp_path


def _trackers_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "trackers" in line and "reasons" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_auto_starts_only_configured_trackers(unconfigured: Path, tiny_llama: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import wandb

    out = unconfigured / "out"
    run = Trainer(str(tiny_llama), output_dir=out, report_to="auto", **ARGS).train(str(quickstart_path()), steps=2)
    assert (out / "tensorboard" / run.run_id).is_dir()
    assert not list(unconfigured.rglob("wandb")) and wandb.run is None  # no W&B run, online or offline
    assert not (out / "mlflow.db").exists() and not (out / "mlruns").exists()
    line = _trackers_line(capsys.readouterr().err)
    assert "report_to=tensorboard" in line and "tensorboard: installed" in line
    assert "mlflow: not configured (set MLFLOW_TRACKING_URI)" in line
    assert "wandb: not configured (set WANDB_API_KEY or WANDB_MODE, or wandb login)" in line


def test_auto_starts_wandb_and_mlflow_once_configured(unconfigured: Path, tiny_llama: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{unconfigured / 'elsewhere.db'}"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = unconfigured / "out"
    run = Trainer(str(tiny_llama), output_dir=out, report_to="auto", **ARGS).train(str(quickstart_path()), steps=2)
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs(client.get_experiment_by_name("backpropagate").experiment_id,
                                  filter_string=f"tags.`mlflow.runName` = '{run.run_id}'")
    assert len(client.get_metric_history(found.info.run_id, "train/loss")) == 2
    err = capsys.readouterr().err
    line = _trackers_line(err)
    assert "report_to=tensorboard,mlflow,wandb" in line
    assert "mlflow: MLFLOW_TRACKING_URI is set" in line and "wandb: WANDB_MODE is set" in line
    assert "wandb_offline" not in err  # offline was the user's choice, nothing to warn about


def test_a_netrc_login_counts_as_configured(unconfigured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "0123456789abcdef0123456789abcdef01234567"
    netrc = unconfigured / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {key}\n")
    netrc.chmod(0o600)
    assert tracking.choose_trackers("auto")[0] == ["tensorboard"]
    monkeypatch.setenv("NETRC", str(netrc))
    names, reasons = tracking.choose_trackers("auto")
    assert names == ["tensorboard", "wandb"] and "wandb: netrc has a login for api.wandb.ai" in str(reasons)
    assert key not in str(reasons)
    (Path.home() / ".netrc").write_text("machine example.com login x password y\n")
    monkeypatch.delenv("NETRC")
    assert tracking.choose_trackers("auto")[0] == ["tensorboard"]  # a netrc without W&B is not a login
    monkeypatch.setenv("WANDB_API_KEY", key)
    assert tracking.choose_trackers(["mlflow"]) == (["mlflow"], None)  # names: exactly those, no reasons
    assert key not in str(tracking.choose_trackers("auto")[1])
