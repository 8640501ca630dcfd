"""One source per option: every settings field is a Trainer argument, a `backprop train` flag (and a
`multi-run` flag where a campaign takes it), a README row and an environment-variable line, all read from
the field itself; and a flag really reaches the training loop."""

from __future__ import annotations

import inspect
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from backpropagate import Trainer
from backpropagate.config import OPTION_GROUPS, TRAINER_ARGS
from backpropagate.demo import quickstart_path
from backpropagate.option_table import environment_table, parameter_table, readme_section
from backpropagate.options import help_text, operational_options, trainer_options
from backpropagate.training.resume import OPERATIONAL
from process_helpers import BACKPROP

README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = "run: python -m backpropagate.option_table --write README.md"


def _command(name: str) -> Any:
    """The Click command typer builds for ``backprop <name>``."""
    from backpropagate import cli

    cli.register_commands()
    return get_command(cli.app).commands[name]  # type: ignore[attr-defined]


def _flags(command: Any) -> dict[str, set[str]]:
    return {p.name: {*p.opts, *p.secondary_opts} for p in command.params}


def test_every_field_is_a_trainer_option() -> None:
    fields = {(group, name) for group, model in OPTION_GROUPS.items() for name in model.model_fields}
    assert set(TRAINER_ARGS.values()) == fields
    assert [s.arg for s in trainer_options()] == list(TRAINER_ARGS)
    for spec in trainer_options():
        assert spec.description and spec.flags, spec.arg


def test_trainer_signature_is_the_fields() -> None:
    params = list(inspect.signature(Trainer.__init__).parameters.values())[1:]
    assert {p.name for p in params} == set(TRAINER_ARGS)
    assert len(params) == len(TRAINER_ARGS)
    assert all(p.default is None for p in params), [p.name for p in params if p.default is not None]
    assert params[0].name == "model" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])


def test_every_option_has_its_train_flag() -> None:
    flags = _flags(_command("train"))
    for spec in trainer_options():
        assert spec.arg in flags, f"backprop train has no flag for {spec.arg}"
        assert set(spec.names) <= flags[spec.arg], spec.arg


def test_campaign_options_have_their_multi_run_flag() -> None:
    flags = _flags(_command("multi-run"))
    for spec in trainer_options():
        assert (spec.arg in flags) == spec.campaign, spec.arg
        if spec.campaign:
            assert set(spec.names) <= flags[spec.arg], spec.arg
    # held-out evaluation is a single run's (a campaign scores its held-out slices after each run)
    assert {s.arg for s in trainer_options() if not s.campaign} == {
        "mode", "strategy", "deepspeed_config", "zero_stage", "eval_steps", "early_stopping_patience",
        "early_stopping_min_delta", "keep_best"}


def test_existing_flag_spellings_still_parse() -> None:
    flags = set().union(*_flags(_command("train")).values())
    for old in ("--lr", "--learning-rate", "-m", "-o", "--output", "--use-dora", "--no-dora", "--load-in-4bit",
                "--no-4bit", "--no-unsloth", "--train-on-all", "--no-packing", "--deepspeed", "--zero", "--fsdp",
                "--no-chunked-loss", "--no-oom-recovery", "--report-to"):
        assert old in flags, old


def _flat(text: str) -> str:
    """Help text without Click's line wrapping (which also breaks after hyphens)."""
    return " ".join(text.split()).replace("- ", "-")


def test_help_lists_every_option_with_its_real_default() -> None:
    out = subprocess.run([BACKPROP, "train", "--help"], capture_output=True, text=True, timeout=120).stdout
    flat = _flat(out)
    for spec in trainer_options():
        assert spec.names[0] in out, spec.arg
        assert _flat(help_text(spec)) in flat, spec.arg
    assert "[default: 256, the quality preset]" in flat and "[default: 0.03]" in flat


def test_readme_tables_are_generated() -> None:
    readme = README.read_text(encoding="utf-8")
    parameters, environment = readme_section(readme, "parameters"), readme_section(readme, "environment")
    for spec in trainer_options():
        assert f"| `{spec.arg}` |" in parameters, f"no README row for {spec.arg}; {REGENERATE}"
        assert f"| `{spec.env}` |" in environment, f"no README env line for {spec.env}; {REGENERATE}"
    assert parameters == parameter_table(), REGENERATE
    assert environment == environment_table(), REGENERATE


def test_resume_may_change_only_operational_options() -> None:
    derived = operational_options()
    assert derived == OPERATIONAL
    assert {"output_dir", "save_steps", "thermal_pause_celsius", "unsloth_fallback"} <= derived
    assert not {"learning_rate", "warmup_ratio", "lr_scheduler", "seed", "lora_r"} & derived


def _train(model: Path, out: Path, *extra: str) -> tuple[str, list[float]]:
    result = subprocess.run([BACKPROP, "train", "--data", str(quickstart_path()), "--model", str(model),
                             "--steps", "4", "--output", str(out), "--lora-r", "8", "--lora-alpha", "16",
                             "--gradient-accumulation", "1", "--report-to", "none", *extra],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    run_id = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("run_id:"))
    from backpropagate import runs

    return run_id, runs.get(run_id, out).loss_history


@pytest.mark.slow
def test_warmup_and_scheduler_flags_change_the_run(tiny_llama: Path, tmp_path: Path) -> None:
    run_id, tuned = _train(tiny_llama, tmp_path / "tuned", "--warmup-ratio", "0.1", "--lr-scheduler", "linear")
    shown = subprocess.run([BACKPROP, "show-run", run_id, "--output", str(tmp_path / "tuned")],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "training.warmup_ratio = 0.1" in shown.stdout
    assert f"training.lr_scheduler = {json.dumps('linear')}" in shown.stdout
    _, default = _train(tiny_llama, tmp_path / "default")
    # 4 steps warm up for 1 in both (ceil(0.4) = ceil(0.12)), so the first loss is the same; the third update
    # runs at 2/3 of the peak rate under linear decay and 3/4 under cosine, so the fourth loss differs.
    assert tuned[0] == pytest.approx(default[0])
    assert tuned[-1] != pytest.approx(default[-1], rel=1e-6, abs=0)
