"""``backprop data ...`` end to end in subprocesses: outputs, summaries, exit codes and coded errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BACKPROP = str(Path(sys.executable).with_name("backprop"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BACKPROP, "data", *args], capture_output=True, text=True, env=dict(os.environ), timeout=300)


def _conv(user: str, assistant: str | None) -> dict:
    messages = [{"role": "user", "content": user}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return {"messages": messages}


def test_filter_and_its_errors(tmp_path: Path) -> None:
    rows = [_conv("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
            _conv("Name a planet.", None),
            _conv("Tell me a joke.", "Why did the chicken cross the road? To get to the other side."),
            _conv("Say it again.", "again and again " * 20)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    original = source.read_bytes()
    done = run("filter", str(source), "--out", str(tmp_path / "out.jsonl"), "--report-json", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    assert "kept 2 of 4 rows" in done.stdout and "no_assistant  removed      1" in done.stdout
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [rows[0], rows[2]]
    assert json.loads((tmp_path / "r.json").read_text())["removed"] == 2

    for args, code in [
        (("filter", str(source), "--out", str(source)), "INPUT_OUTPUT_IS_INPUT"),
        (("filter", str(source), "--out", str(tmp_path / "out.jsonl")), "STATE_OUTPUT_EXISTS"),
        (("filter", str(source), "--out", str(tmp_path / "x.jsonl"), "--filters", "empty,sparkle"), "INPUT_UNKNOWN_FILTER"),
        (("filter", str(source), "--out", str(tmp_path / "x.jsonl"), "--max-repetition", "3"), "INPUT_INVALID_VALUE"),
        (("dedup", str(tmp_path / "r.json"), "--out", str(tmp_path / "x.jsonl")), "INPUT_UNKNOWN_FORMAT"),
    ]:
        failed = run(*args)
        assert failed.returncode == 1 and f"[{code}]:" in failed.stderr and "hint:" in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
    assert source.read_bytes() == original and not (tmp_path / "x.jsonl").exists()


def test_dedup_and_report(shared_datasets: Path, tmp_path: Path) -> None:
    done = run("dedup", str(shared_datasets / "glaive_toolcall_en_demo.json"), "--out", str(tmp_path / "d.jsonl"),
               "--keep-format")
    assert done.returncode == 0, done.stderr
    assert "exact    removed     35" in done.stdout and "of 300 rows" in done.stdout
    kept = int(done.stdout.split("kept ")[1].split()[0])
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == kept
    report = run("report", str(tmp_path / "d.jsonl"), "--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json"))
    assert report.returncode == 0, report.stderr
    assert f"rows        {kept}" in report.stdout and "duplicates  exact 0, near 0" in report.stdout
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == kept
    assert "data:image/png;base64," in (tmp_path / "r.html").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_conv("Hello?", None)) + "\n")
    failed = run("report", str(bad))
    assert failed.returncode == 2 and "verdict     FAIL" in failed.stdout


def test_perplexity_then_curriculum(tiny_llama: Path, tmp_path: Path) -> None:
    source = tmp_path / "text.jsonl"
    texts = ["The cat sat on the mat.", "Water boils at 100 degrees Celsius.", "Paris is the capital of France.",
             "A neural network learns from examples."]
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    done = run("perplexity", str(source), "--out", str(tmp_path / "p.jsonl"), "--model", str(tiny_llama),
               "--max-percentile", "80")
    assert done.returncode == 0, done.stderr
    assert "kept 3 of 4 rows" in done.stdout
    scores = [json.loads(line) for line in (tmp_path / "p.scores.jsonl").read_text().splitlines()]
    assert [s["row"] for s in scores] == [1, 2, 3, 4] and all(s["perplexity"] > 1 for s in scores)
    worst = max(scores, key=lambda s: s["perplexity"])
    assert [s["kept"] for s in scores] == [s is not worst for s in scores]
    # the scores file also fits the perplexity run's output (the rows it kept)
    ordered = run("curriculum", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "c.jsonl"), "--scores",
                  str(tmp_path / "p.scores.jsonl"), "--buckets", "2")
    assert ordered.returncode == 0, ordered.stderr
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    kept = sorted((s for s in scores if s["kept"]), key=lambda s: s["perplexity"])
    assert [r["text"] for r in rows] == [texts[s["row"] - 1] for s in kept]
    assert [r["difficulty"] for r in rows] == [round(s["perplexity"], 6) for s in kept]
    assert [r["bucket"] for r in rows] == [1, 1, 2] and (tmp_path / "c.bucket-2.jsonl").is_file()
