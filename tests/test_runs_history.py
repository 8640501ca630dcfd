"""The history commands over real recorded runs of a tiny model: list, show, diff, replay, export, plots."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate import Trainer, runs
from backpropagate.demo import quickstart_path
from backpropagate.errors import BackpropagateError
from support.faults import faults

BACKPROP = str(Path(sys.executable).with_name("backprop"))
ARGS = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 1, "max_seq_length": 64,
        "save_steps": 0, "seed": 5}


@pytest.fixture(scope="module")
def recorded(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two completed runs in one output dir (different learning rates), one in another, one failed."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    data = str(quickstart_path())
    a = Trainer(str(tiny_llama), output_dir=first, learning_rate=1e-3, **ARGS).train(data, steps=4)
    b = Trainer(str(tiny_llama), output_dir=first, learning_rate=3e-3, **ARGS).train(data, steps=6)
    c = Trainer(str(tiny_llama), output_dir=second, **ARGS).train(data, steps=3)

    def fail_at_step_2(where: str, step: int, detail: object) -> None:
        if where == "micro_batch" and step == 2:
            raise RuntimeError("injected failure")

    with faults(fail_at_step_2), pytest.raises(BackpropagateError):
        Trainer(str(tiny_llama), output_dir=first, **ARGS).train(data, steps=4)
    failed = runs.list(first)[0]
    return {"first": first, "second": second, "a": a, "b": b, "c": c, "failed": failed}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BACKPROP, *args], capture_output=True, text=True, timeout=300)


def test_list_filters_and_finds_every_output_dir(recorded) -> None:
    everywhere = runs.list()
    ids = {r.run_id for r in everywhere}
    assert {recorded[k].run_id for k in "abc"} <= ids  # no --output: the user index knows both dirs
    first = runs.list(recorded["first"])
    newest_first = [recorded["failed"].run_id, recorded["b"].run_id, recorded["a"].run_id]
    assert [r.run_id for r in first] == newest_first
    (failed,) = runs.list(recorded["first"], status="failed")
    assert failed.error_code == "RUNTIME_TRAINING_FAILED" and failed.error_message == "injected failure"
    assert [r.run_id for r in runs.list(recorded["first"], status="completed", limit=1)] == [recorded["b"].run_id]
    done = _cli("list-runs", "--output", str(recorded["first"]), "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [r["run_id"] for r in listed] == newest_first
    assert {"run_id", "status", "model", "dataset_hash", "config", "loss_history", "details"} <= set(listed[0])
    table = _cli("list-runs")
    assert table.returncode == 0 and recorded["c"].run_id[:8] in table.stdout and "completed" in table.stdout
    assert _cli("list-runs", "--status", "paused").stderr.startswith("[INPUT_INVALID_VALUE]:")


def test_show_with_a_partial_id_and_a_plot(recorded, tmp_path: Path) -> None:
    run = recorded["b"]
    plot = tmp_path / "loss.png"
    done = _cli("show-run", run.run_id[:6], "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert run.run_id in out and "completed" in out and "learning_rate = 0.003" in out and "sha256" in out
    assert "┤" in out and "step 1 .. 6" in out and f"plot: {plot}" in out
    _assert_curves_drawn(plot, colours=1)


def test_ambiguous_prefix_lists_the_matches(recorded, tmp_path: Path) -> None:
    with pytest.raises(BackpropagateError) as info:
        runs.get("", recorded["first"])
    assert info.value.code == "INPUT_INVALID_VALUE"
    store = runs.RunStore.for_output(tmp_path)
    for run_id in ("abc123" + "0" * 26, "abc456" + "0" * 26):
        store.start(run_id=run_id, model="m", dataset_path=None, dataset_hash=None, config={}, steps=1)
    with pytest.raises(BackpropagateError) as info:
        runs.get("abc", tmp_path)
    assert info.value.code == "INPUT_RUN_ID_AMBIGUOUS" and "abc123" in info.value.message
    done = _cli("show-run", "abc", "--output", str(tmp_path))
    assert done.stderr.startswith("[INPUT_RUN_ID_AMBIGUOUS]:") and "abc456" in done.stderr
    assert runs.get("abc4", tmp_path).run_id.startswith("abc456")
    assert _cli("show-run", "zzzz").stderr.startswith("[STATE_RUN_NOT_FOUND]:")


def test_diff_shows_exactly_the_differing_keys(recorded, tmp_path: Path) -> None:
    a, b = recorded["a"], recorded["b"]
    d = runs.diff(a.run_id, b.run_id)
    assert set(d.config) == {"training.learning_rate", "steps"}
    assert d.config["training.learning_rate"] == (1e-3, 3e-3) and d.config["steps"] == (4, 6)
    assert d.same_dataset and d.results["steps"] == (4, 6)
    assert d.results["final_loss"] == (a.final_loss, b.final_loss)
    assert d.results["best_loss"] == (min(a.loss_history), min(b.loss_history))
    assert all(v and v > 0 for v in d.results["tokens_per_second"])
    plot = tmp_path / "both.png"
    done = _cli("diff-runs", a.run_id[:8], b.run_id[:8], "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    assert "training.learning_rate" in done.stdout and "lora.r" not in done.stdout
    _assert_curves_drawn(plot, colours=2)


def test_replay_reproduces_the_loss_history_exactly(recorded, tmp_path: Path) -> None:
    original = recorded["a"]
    again = runs.replay(original.run_id, new_output=tmp_path / "replay")
    assert again.loss_history == original.loss_history and again.run_id != original.run_id
    assert runs.get(again.run_id, tmp_path / "replay").details["replay_of"] == original.run_id
    assert runs.get(original.run_id).details["replays"][-1]["run_id"] == again.run_id


def test_replay_refuses_a_changed_or_missing_dataset(tiny_llama: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(quickstart_path().read_text())
    run = Trainer(str(tiny_llama), output_dir=tmp_path / "o", **ARGS).train(str(data), steps=2)
    data.write_text(quickstart_path().read_text() + quickstart_path().read_text().splitlines()[0] + "\n")
    with pytest.raises(BackpropagateError) as info:
        runs.replay(run.run_id, tmp_path / "o")
    assert info.value.code == "STATE_DATASET_CHANGED" and "--force" in info.value.hint
    assert runs.replay(run.run_id, tmp_path / "o", force=True).steps == 2
    data.unlink()
    with pytest.raises(BackpropagateError) as info:
        runs.replay(run.run_id, tmp_path / "o")
    assert info.value.code == "INPUT_FILE_NOT_FOUND"


def test_export_in_each_format_reads_back(recorded, tmp_path: Path) -> None:
    first = recorded["first"]
    expected = [r.run_id for r in runs.list(first)]
    assert len(expected) == 3
    as_json = json.loads(runs.export("json", tmp_path / "h.json", first))
    assert [r["run_id"] for r in as_json] == expected == [
        json.loads(line)["run_id"] for line in runs.export("jsonl", output_dir=first).splitlines()]
    rows = list(csv.DictReader(io.StringIO(runs.export("csv", tmp_path / "h.csv", first))))
    assert [r["run_id"] for r in rows] == expected
    assert json.loads(rows[0]["loss_history"]) == runs.get(expected[0]).loss_history
    assert json.loads((tmp_path / "h.json").read_text()) == as_json
    done = _cli("export-runs", "--format", "csv", "--output", str(first), "--out", str(tmp_path / "c.csv"))
    assert done.returncode == 0 and (tmp_path / "c.csv").read_text() == (tmp_path / "h.csv").read_text()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = _cli("export-runs", "--out", str(blocker / "h.json"))
    assert err.returncode == 1 and "[STATE_WRITE_FAILED]:" in err.stderr and "Traceback" not in err.stderr
    assert _cli("export-runs", "--format", "xml").stderr.startswith("[INPUT_INVALID_VALUE]:")


def test_a_history_from_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (99)")
        conn.execute("CREATE TABLE runs (run_id TEXT)")
    before = db.read_bytes()
    done = _cli("list-runs", "--output", str(tmp_path))
    assert done.returncode == 1 and done.stderr.startswith("[STATE_HISTORY_CORRUPT]:") and "99" in done.stderr
    assert db.read_bytes() == before


def _assert_curves_drawn(path: Path, *, colours: int) -> None:
    """The PNG has the expected size and, inside the axes, pixels of ``colours`` distinct line colours."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    assert image.size == (800, 450)
    width, height = image.size
    pixels = image.crop((width // 8, height // 8, width * 7 // 8, height * 6 // 8)).getdata()
    saturated = {p for p in pixels if max(p) - min(p) > 80}  # coloured line pixels, not grey grid or text
    assert len(saturated) > 20
    hues = {(p[0] > p[2], p[1] > 100) for p in saturated}
    assert len(hues) >= colours


def test_a_run_is_listed_under_the_path_the_user_gave_not_a_symlinks_target(tiny_llama: Path,
                                                                            tmp_path: Path) -> None:
    target = tmp_path / "disk" / "runs"
    target.mkdir(parents=True)
    link = tmp_path / "my-output"
    link.symlink_to(target)
    run = Trainer(str(tiny_llama), output_dir=link, **ARGS).train(str(quickstart_path()), steps=2)
    (listed,) = [r for r in runs.list() if r.run_id == run.run_id]  # once, though two paths lead there
    assert listed.output_dir == str(link)
    assert runs.get(run.run_id, target).run_id == run.run_id  # the target still finds it
    shown = _cli("show-run", run.run_id[:8])
    assert shown.returncode == 0 and f"output dir  {link}" in shown.stdout, shown.stdout + shown.stderr
