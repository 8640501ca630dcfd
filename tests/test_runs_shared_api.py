"""The run-history API the shells share (issue 18, part 6): prefix matching over several output folders,
campaign detection and diff, with the web UI's Workspace answering exactly what ``backpropagate.runs`` does.

Histories are written through ``RunStore`` directly (no training), except for the resume test, which stops
and resumes a tiny run (a few seconds).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from backpropagate import runs
from backpropagate.errors import BackpropagateError
from backpropagate.runs import RunStore
from backpropagate.ui.views import diff_text
from backpropagate.ui.workspace import Workspace

SRC = Path(__file__).resolve().parents[1] / "src" / "backpropagate"


def _record(folder: Path, run_id: str, *, lr: float, campaign: bool = False, loss: float = 1.0) -> None:
    store = RunStore.for_output(folder)
    config = {"training": {"learning_rate": lr, "output_dir": str(folder)}, "lora": {"r": 4}}
    if campaign:
        config["multi_run"] = {"num_runs": 2}
    store.start(run_id=run_id, model="tiny", dataset_path="d.jsonl", dataset_hash="abc", config=config, steps=3)
    store.finish(run_id, "completed", completed_steps=3, loss_history=[loss + 1, loss])


def _code(fn, *args) -> str:
    with pytest.raises(BackpropagateError) as info:
        fn(*args)
    return info.value.code


@pytest.fixture
def sandbox(tmp_path: Path) -> Workspace:
    """A UI sandbox with two output folders: aaaa1111 + abcd2222 (a campaign) in one, aaaa3333 in the other."""
    ws = Workspace(tmp_path / "sandbox", default_model="tiny")
    first, second = ws.root / "runs" / "run-1", ws.root / "runs" / "run-2"
    _record(first, "aaaa1111", lr=1e-3)
    _record(first, "abcd2222", lr=1e-3, campaign=True, loss=0.5)
    _record(second, "aaaa3333", lr=3e-3, loss=0.25)
    return ws


def test_prefix_matching_across_folders(sandbox: Workspace) -> None:
    folders = sandbox.output_dirs()
    assert len(folders) == 2
    assert runs.get("aaaa3", folders).run_id == "aaaa3333"
    assert runs.get("abcd", folders).output_dir == str(folders[0].resolve())
    assert _code(runs.get, "aaaa", folders) == "INPUT_RUN_ID_AMBIGUOUS"  # one match in each folder
    assert _code(runs.get, "a", folders) == "INPUT_RUN_ID_AMBIGUOUS"  # two in one folder
    assert _code(runs.get, "zzzz", folders) == "STATE_RUN_NOT_FOUND"
    assert _code(runs.get, "aaaa", []) == "STATE_RUN_NOT_FOUND"
    assert _code(runs.get, "  ", folders) == "INPUT_INVALID_VALUE"
    assert [r.run_id for r in runs.list(folders)] == ["aaaa3333", "abcd2222", "aaaa1111"]  # newest first


def test_the_ui_answers_what_the_api_answers(sandbox: Workspace) -> None:
    folders = sandbox.output_dirs()
    assert sandbox.list_runs() == runs.list(folders)
    assert sandbox.get_run("aaaa3") == runs.get("aaaa3", folders)
    for prefix in ("aaaa", "zzzz", ""):
        assert _code(sandbox.get_run, prefix) == _code(runs.get, prefix, folders)
    ui, api = sandbox.diff_runs("aaaa1", "aaaa3"), runs.diff("aaaa1", "aaaa3", folders)
    assert ui == api
    assert set(api.results) >= {"status", "steps", "final_loss", "best_loss"}  # the CLI's rows, in the UI too
    assert api.config["training.learning_rate"] == (1e-3, 3e-3) and "lora.r" not in api.config
    text = diff_text(ui)
    assert "training.learning_rate" in text and "best_loss" in text and "same dataset: yes" in text


def test_campaign_detection_is_the_records(sandbox: Workspace) -> None:
    assert runs.get("abcd", sandbox.output_dirs()).is_campaign
    assert not runs.get("aaaa1", sandbox.output_dirs()).is_campaign
    from backpropagate.ui.views import runs_table

    kinds = {row[0]: row[1] for row in runs_table(sandbox.list_runs(), sandbox.root)}
    assert kinds == {"aaaa3333": "completed", "abcd2222": "completed (multi-run)", "aaaa1111": "completed"}


def test_replay_refuses_a_campaign(sandbox: Workspace) -> None:
    assert _code(runs.replay, "abcd", sandbox.output_dirs()[0]) == "INPUT_INVALID_VALUE"


def _shell_sources() -> list[tuple[Path, ast.AST]]:
    files = sorted([*(SRC / "cli").glob("*.py"), *(SRC / "ui").glob("*.py")])
    return [(f, ast.parse(f.read_text(encoding="utf-8"))) for f in files]


def test_shells_do_not_decide_campaigns_or_match_prefixes() -> None:
    """``"multi_run" in config`` is ``RunRecord.is_campaign``; ``run_id.startswith`` is ``runs.get``."""
    found = []
    for path, tree in _shell_sources():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
                    and node.left.value == "multi_run" and isinstance(node.ops[0], ast.In | ast.NotIn)):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "startswith" and "run_id" in ast.unparse(node.func.value)):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert not found, "decide these through the runs API: " + "; ".join(found)


def test_resume_through_the_api_finishes_a_stopped_run(tiny_llama: Path, tmp_path: Path) -> None:
    """``runs.prepare_resume`` (what ``backprop resume`` and the Runs page call) finishes a stopped run."""
    from backpropagate import Trainer, TrainingCallback
    from backpropagate.demo import quickstart_path
    from backpropagate.training.stop import RunInterrupted

    settings = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 1, "max_seq_length": 64,
                "save_steps": 0, "seed": 3}
    data, out = str(quickstart_path()), tmp_path / "out"
    reference = Trainer(str(tiny_llama), output_dir=tmp_path / "ref", **settings).train(data, steps=4)
    trainer = Trainer(str(tiny_llama), output_dir=out, **settings)

    def on_step(step: int, loss: float) -> None:
        if step == 2:
            trainer.stop("test")

    with pytest.raises(RunInterrupted) as info:
        trainer.train(data, steps=4, callback=TrainingCallback(on_step=on_step))
    resumption = runs.prepare_resume(info.value.run_id[:6], out)
    assert resumption.record.run_id == info.value.run_id and not resumption.is_campaign
    assert resumption.record.status == "interrupted"
    run = runs.resume(info.value.run_id[:6], out)
    assert run.run_id == info.value.run_id and run.loss_history == reference.loss_history
    assert runs.get(run.run_id, [out]).status == "completed"
