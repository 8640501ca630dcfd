"""Configuration precedence, the error catalog and log redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backpropagate.config import DEFAULT_MODEL, OPTION_DOCS, TRAINER_ARGS, resolve_settings
from backpropagate.errors import CATALOG, BackpropagateError
from backpropagate.logs import bound_run, configure, get_logger, redact


def test_defaults_match_the_parameter_table() -> None:
    s = resolve_settings()
    assert s.model.name == DEFAULT_MODEL == "Qwen/Qwen2.5-7B-Instruct"
    assert (s.lora.r, s.lora.alpha, s.lora.dropout) == (256, 512, 0.05)
    t = s.training
    # The quality LoRA preset (the default) sets the learning rate to 10x the base 2e-4.
    assert s.lora.preset == "quality" and t.learning_rate == pytest.approx(2e-3)
    assert (t.batch_size, t.gradient_accumulation, t.max_seq_length) == ("auto", 4, 2048)
    assert t.train_on_responses is True and t.packing is True
    assert s.model.trust_remote_code is False


def test_env_overrides_and_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKPROPAGATE_LORA__R", "8")
    monkeypatch.setenv("BACKPROPAGATE_TRAINING__LEARNING_RATE", "0.001")
    monkeypatch.setenv("BACKPROPAGATE_MODEL__NAME", "/models/x")
    s = resolve_settings()
    assert (s.lora.r, s.training.learning_rate, s.model.name) == (8, 0.001, "/models/x")
    s = resolve_settings(lora_r=4)
    assert s.lora.r == 4 and s.training.learning_rate == 0.001


def test_bad_env_value_is_a_coded_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKPROPAGATE_LORA__R", "many")
    with pytest.raises(BackpropagateError) as info:
        resolve_settings()
    assert info.value.code == "INPUT_CONFIG_INVALID"
    assert "BACKPROPAGATE_LORA__R" in info.value.message


@pytest.mark.parametrize("arg,value", [("lora_r", 0), ("lora_alpha", -1), ("lora_dropout", 1.0),
                                       ("learning_rate", 0), ("batch_size", 0), ("gradient_accumulation", 0),
                                       ("max_seq_length", -5), ("lr_scheduler", "wavy")])
def test_out_of_range_arguments(arg: str, value: object) -> None:
    with pytest.raises(BackpropagateError) as info:
        resolve_settings(**{arg: value})
    assert info.value.code == "INPUT_INVALID_VALUE"
    assert arg in info.value.message


def test_every_option_is_documented() -> None:
    assert set(TRAINER_ARGS) == set(OPTION_DOCS)


def test_catalog_entries_are_complete() -> None:
    for code, spec in CATALOG.items():
        assert code.split("_")[0] in {"INPUT", "DEP", "RUNTIME", "STATE", "SLAO", "HUB"}
        assert spec.summary and spec.hint
    err = BackpropagateError("INPUT_FILE_NOT_FOUND", "nope")
    assert str(err) == "[INPUT_FILE_NOT_FOUND]: nope" and err.hint == CATALOG["INPUT_FILE_NOT_FOUND"].hint
    with pytest.raises(KeyError):
        BackpropagateError("NOT_A_CODE", "x")


@pytest.mark.parametrize("secret,kept", [
    ("token hf_abcdefghijklmnopqrstuvwx used", "token hf_*** used"),
    ("key sk-proj-abcdefghijklmnop", "key sk-***"),
    ("Authorization: Bearer abc.def.ghijklmnop", "Authorization: Bearer ***"),
    ("aws AKIAABCDEFGHIJKLMNOP", "aws AKIA***"),
    ("password=hunter2 and token: 'zzz'", "password=*** and token: '***'"),  # quotes kept: JSON stays JSON
])
def test_redaction(secret: str, kept: str) -> None:
    assert redact(secret) == kept


def test_logs_carry_run_id_and_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure(level="INFO", json=True)
    try:
        with bound_run("run-123"):
            get_logger().info("hello", detail="password=hunter2")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(line)
        assert record["run_id"] == "run-123" and record["event"] == "hello"
        assert "hunter2" not in line
    finally:
        configure(json=False)


def test_logging_settings_are_read_through_the_settings(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKPROPAGATE_LOG_LEVEL", "debug")  # any case, like the other settings' values
    monkeypatch.setenv("BACKPROPAGATE_LOG_JSON", "1")
    try:
        configure()
        get_logger().debug("quiet_detail", step=3)
        record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert record["event"] == "quiet_detail" and record["level"] == "debug"

        monkeypatch.setenv("BACKPROPAGATE_LOG_LEVEL", "loud")  # the logs fall back to INFO to report it ...
        configure()
        get_logger().debug("hidden")
        get_logger().info("shown")
        logged = capsys.readouterr().err
        assert "shown" in logged and "hidden" not in logged
        with pytest.raises(BackpropagateError) as info:  # ... and the run's settings refuse it, naming it
            resolve_settings()
        assert info.value.code == "INPUT_CONFIG_INVALID" and "BACKPROPAGATE_LOG_LEVEL" in info.value.message
    finally:
        monkeypatch.delenv("BACKPROPAGATE_LOG_LEVEL")
        monkeypatch.delenv("BACKPROPAGATE_LOG_JSON")
        configure()


def test_debug_setting_shows_the_traceback(tmp_path: Path) -> None:
    from test_cli import run

    missing = str(tmp_path / "missing.jsonl")
    plain = run("data", "report", missing)
    assert "[INPUT_FILE_NOT_FOUND]" in plain.stderr and "Traceback" not in plain.stderr
    shown = run("data", "report", missing, env={"BACKPROPAGATE_DEBUG": "1"})
    assert "[INPUT_FILE_NOT_FOUND]" in shown.stderr and "Traceback" in shown.stderr
