"""Pathological dataset files, generated: nesting of any depth, lone surrogates anywhere, CSVs whose quotes break
at random, and paths that are links, pipes or folders. Each must be one ``INPUT_`` error naming the file and the
line, from the loader, from ``backprop data`` and from ``backprop train`` (before any model loads)."""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate.data import load_examples
from backpropagate.data.load import load_rows
from backpropagate.data.validate import MAX_DEPTH
from backpropagate.errors import BackpropagateError

BACKPROP = str(Path(sys.executable).with_name("backprop"))
WORDS = string.ascii_letters + string.digits + " ,.;:!?-'\"\\/\t" + "éß中文😀"


def raises(code: str, source: object) -> BackpropagateError:
    with pytest.raises(BackpropagateError) as info:
        load_rows(source)
    assert info.value.code == code, info.value
    return info.value


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BACKPROP, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


def coded_failure(done: subprocess.CompletedProcess[str], code: str) -> str:
    assert done.returncode != 0 and f"[{code}]:" in done.stderr and "hint:" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stderr


def text(rng: random.Random, low: int = 1, high: int = 40) -> str:
    return "".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def rows(rng: random.Random, count: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": text(rng)}, {"role": "assistant", "content": text(rng)}]}
            for _ in range(count)]


def nested(rng: random.Random, depth: int) -> str:
    """JSON text of containers nested ``depth`` deep, arrays and objects mixed at random."""
    opening = [rng.choice(("[", '{"k": ')) for _ in range(depth)]
    closing = ["]" if o == "[" else "}" for o in reversed(opening)]
    return "".join(opening) + "0" + "".join(closing)


# --- nesting -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_nesting_beyond_the_bound_names_file_and_line(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    depth = rng.choice([MAX_DEPTH + 1, rng.randint(MAX_DEPTH + 2, 2000), rng.randint(2000, 100_000)])
    good = rows(rng, rng.randint(1, 6))
    at = rng.randrange(len(good) + 1)
    lines = [json.dumps(r) for r in good]
    lines.insert(at, '{"text": "x", "extra": ' + nested(rng, depth - 1) + "}")
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    err = raises("INPUT_INVALID_JSON", jsonl)
    assert f"{jsonl} line {at + 1}:" in err.message and f"deeper than {MAX_DEPTH}" in err.message
    array = tmp_path / "deep.json"
    array.write_text("[\n" + ",\n".join(lines) + "\n]\n", encoding="utf-8")
    err = raises("INPUT_INVALID_JSON", array)
    assert f"{array} line {at + 2}:" in err.message
    cell = tmp_path / "deep.csv"
    cell.write_text('conversations\n"' + nested(rng, depth).replace('"', '""') + '"\n', encoding="utf-8")
    assert "line 2" in raises("INPUT_INVALID_JSON", cell).message
    with pytest.raises(BackpropagateError) as info:
        load_rows([*good, {"text": "x", "extra": json.loads(nested(rng, min(depth, 900)))}])
    assert info.value.code == "INPUT_INVALID_JSON"


@pytest.mark.parametrize("seed", range(4))
def test_nesting_within_the_bound_loads(seed: int, tmp_path: Path) -> None:
    rng = random.Random(100 + seed)
    depth = rng.randint(1, MAX_DEPTH - 1)
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"text": "x"}) + "\n" + '{"text": "y", "extra": ' + nested(rng, depth) + "}\n",
                    encoding="utf-8")
    assert [r["text"] for r in load_rows(path)] == ["x", "y"]


# --- text that is not text ---------------------------------------------------------------------------------
def lone_surrogate(rng: random.Random) -> str:
    return "\\u" + rng.choice(["d800", "dbff", "dc00", "dfff", f"d{rng.choice('89ab')}{rng.randrange(256):02x}",
                               f"d{rng.choice('cdef')}{rng.randrange(256):02x}"])


@pytest.mark.parametrize("seed", range(8))
def test_lone_surrogates_anywhere_name_file_and_line(seed: int, tmp_path: Path) -> None:
    rng = random.Random(200 + seed)
    good = rows(rng, rng.randint(1, 8))
    at = rng.randrange(len(good))
    # Mark a random place in a content, a role or a key of that row (all are text), then swap the escape in.
    message = good[at]["messages"][rng.randrange(2)]
    field = rng.choice(["content", "role", "key"])
    if field == "key":
        message["n\ue000te"] = "x"
    else:
        cut = rng.randint(0, len(message[field]))
        message[field] = message[field][:cut] + "\ue000" + message[field][cut:]
    escape = lone_surrogate(rng)
    lines = [json.dumps(r, ensure_ascii=rng.random() < 0.5).replace("\\ue000", escape).replace("\ue000", escape)
             for r in good]
    path = tmp_path / "surrogate.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    err = raises("INPUT_ENCODING_ERROR", path)
    assert f"{path} line {at + 1}:" in err.message and "surrogate" in err.message
    as_json = tmp_path / "surrogate.json"
    as_json.write_text("[\n" + ",\n".join(lines) + "\n]", encoding="utf-8")
    assert f"line {at + 2}:" in raises("INPUT_ENCODING_ERROR", as_json).message
    in_memory = [json.loads(line) for line in lines]
    assert "row" in raises("INPUT_ENCODING_ERROR", in_memory).message


def test_surrogate_pairs_and_escaped_backslashes_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text('{"text": "smile \\ud83d\\ude00"}\n{"text": "a literal \\\\ud800"}\n', encoding="utf-8")
    assert [r["text"] for r in load_rows(path)] == ["smile 😀", "a literal \\ud800"]


# --- CSV quotes ---------------------------------------------------------------------------------------------
def csv_text(rng: random.Random, count: int) -> tuple[str, list[list[str]], list[int], list[int]]:
    """A CSV written cell by cell: (text, records, offsets of the opening quotes, offsets of the records)."""
    records = [["text", "note"]] + [[text(rng, 0, 30) + rng.choice(["", "\n" + text(rng)]), text(rng, 0, 10)]
                                    for _ in range(count)]
    out, quotes, starts = "", [], []
    for record in records:
        starts.append(len(out))
        cells = []
        for cell in record:
            if rng.random() < 0.5 or any(ch in cell for ch in ',"\n\r'):
                quotes.append(len(out) + sum(len(c) + 1 for c in cells))
                cell = '"' + cell.replace('"', '""') + '"'
            cells.append(cell)
        out += ",".join(cells) + "\n"
    return out, records, quotes, starts


@pytest.mark.parametrize("seed", range(12))
def test_random_csv_with_quotes_loads_and_a_broken_quote_is_refused(seed: int, tmp_path: Path) -> None:
    rng = random.Random(300 + seed)
    content, records, quotes, starts = csv_text(rng, rng.randint(1, 12))
    good = tmp_path / "good.csv"
    good.write_text(content, encoding="utf-8")
    assert [[r["text"], r["note"]] for r in load_rows(good)] == records[1:]
    if quotes and rng.random() < 0.5:  # a truncated export: the file ends inside a quoted cell
        opening = rng.choice(quotes)
        broken_text = content[:rng.randint(opening + 1, content.index('"', opening + 1))]
    else:  # a stray quote opens a record's first cell and nothing after it closes it
        opening = starts[rng.randrange(1, len(starts))]
        broken_text = content[:opening] + '"' + content[opening:].replace('"', "")
    broken = tmp_path / "broken.csv"
    broken.write_text(broken_text, encoding="utf-8")
    line = broken_text.count("\n", 0, opening) + 1
    err = raises("INPUT_FILE_CORRUPT", broken)
    assert f"{broken} line {line}:" in err.message and "unterminated quote" in err.message


# --- paths that are not files -----------------------------------------------------------------------------------
def test_links_pipes_and_folders_say_what_they_are(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    assert "symbolic link loop" in raises("INPUT_FILE_UNREADABLE", tmp_path / "a.jsonl").message
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    assert "symbolic link to" in raises("INPUT_FILE_NOT_FOUND", tmp_path / "gone.jsonl").message
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    err = raises("INPUT_UNSUPPORTED_FILE_TYPE", folder)
    assert "is a folder" in err.message and "train.jsonl" in err.message and not err.retryable
    (folder / "state.json").write_text("{}", encoding="utf-8")
    err = raises("INPUT_FILE_CORRUPT", folder)
    assert not err.retryable


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_fifo_is_refused_without_being_read(tmp_path: Path) -> None:
    pipe = tmp_path / "stream.jsonl"
    os.mkfifo(pipe)
    # A read would block forever (no writer): the subprocess timeout catches a regression.
    stderr = coded_failure(cli("data", "report", str(pipe)), "INPUT_FILE_UNREADABLE")
    assert "named pipe (FIFO)" in stderr and "not a regular file" in stderr


def test_null_text_names_the_key_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "null.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": null}\n', encoding="utf-8")
    with pytest.raises(BackpropagateError) as info:
        load_examples(path)
    err = info.value
    assert err.code == "INPUT_UNKNOWN_FORMAT" and f"{path} line 3:" in err.message
    assert "`text` value is null, expected a string" in err.message


# --- through the CLI ------------------------------------------------------------------------------------------
def hostile_files(tmp_path: Path, rng: random.Random) -> dict[str, tuple[Path, str]]:
    files = {
        "deep.jsonl": ('{"text": ' + nested(rng, 100_000) + "}\n", "INPUT_INVALID_JSON"),
        "surrogate.jsonl": ('{"text": "ok"}\n{"text": "bad ' + lone_surrogate(rng) + '"}\n', "INPUT_ENCODING_ERROR"),
        "quote.csv": ('text\n"one"\n"two\nthree\n', "INPUT_FILE_CORRUPT"),
        "null.jsonl": ('{"text": null}\n', "INPUT_UNKNOWN_FORMAT"),
    }
    out = {}
    for name, (content, code) in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        out[name] = (tmp_path / name, code)
    return out


def test_data_commands_give_coded_errors(tmp_path: Path) -> None:
    for name, (path, code) in hostile_files(tmp_path, random.Random(7)).items():
        for args in (["report", str(path)], ["dedup", str(path), "--out", str(tmp_path / f"{name}.out.jsonl")]):
            stderr = coded_failure(cli("data", *args), code)
            assert str(path) in stderr, stderr
            assert not (tmp_path / f"{name}.out.jsonl").exists()


def test_train_refuses_hostile_data_before_loading_a_model(tmp_path: Path) -> None:
    """The model folder exists but cannot load: had training loaded it before checking the data, the error would
    be a DEP_ one."""
    folder = tmp_path / "unloadable-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    model = str(folder)
    for name, (path, code) in hostile_files(tmp_path, random.Random(8)).items():
        out = tmp_path / f"out-{name}"
        coded_failure(cli("train", "--data", str(path), "--model", model, "--steps", "1", "--output", str(out)), code)
        assert not (out / "lora").exists()
