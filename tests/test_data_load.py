"""Loading every container (JSONL, JSON, CSV, Parquet, save_to_disk, Dataset, .txt) for every format,
the real sample datasets, the errors a user can cause, and dataset fingerprints."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backpropagate.data.agentic import default_call_id
from backpropagate.data.formats import Conversation, detect_format, to_examples
from backpropagate.data.load import dataset_fingerprint, load_rows
from backpropagate.errors import BackpropagateError

GLAIVE_TOOLS = json.dumps([{"name": "get_weather", "parameters": {"type": "object"}}])
ROWS: dict[str, list[dict]] = {
    "sharegpt": [
        {"conversations": [{"from": "human", "value": "Hi there "},
                           {"from": "gpt", "value": " Hello!\nHow can I help?"}],
         "system": "Be brief."},
        {"conversations": [{"from": "human", "value": "Weather in Paris?"},
                           {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
                           {"from": "observation", "value": '{"temp": "18C"}'},
                           {"from": "gpt", "value": "It is 18C."}],
         "tools": GLAIVE_TOOLS},
    ],
    "alpaca": [
        {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"},
        {"instruction": "Say hi.", "input": "", "output": "hi", "system": "You are terse.",
         "history": [["Who are you?", "A bot."]]},
    ],
    "openai": [
        {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello \n"}]},
        {"messages": [{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": None,
                       "tool_calls": [{"id": "c1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                      {"role": "tool", "content": "18C", "tool_call_id": "c1"},
                      {"role": "assistant", "content": "It is 18C."}]},
    ],
    "chatml": [
        {"text": "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi\n<|im_end|>\n"
                 "<|im_start|>assistant\n Hello <|im_end|>\n"},
        {"text": "<|im_start|>user\n2+2?<|im_end|><|im_start|>assistant\n4<|im_end|>"},
    ],
    "text": [{"text": "First document, with a comma."}, {"text": "Second document."}],
}
# The normalised form of each format's rows, whatever the container.
EXPECTED = {
    "sharegpt": [
        ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there "},
         {"role": "assistant", "content": " Hello!\nHow can I help?"}),
        ({"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": "", "tool_calls": [  # glaive gives no call id: a stable one is made
             {"type": "function", "id": default_call_id(2, 2, 0),
              "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
         {"role": "tool", "content": '{"temp": "18C"}', "tool_call_id": default_call_id(2, 2, 0),
          "name": "get_weather"},
         {"role": "assistant", "content": "It is 18C."}),
    ],
    "alpaca": [
        ({"role": "user", "content": "Add the numbers.\n\n2 and 2"}, {"role": "assistant", "content": "4"}),
        ({"role": "system", "content": "You are terse."}, {"role": "user", "content": "Who are you?"},
         {"role": "assistant", "content": "A bot."}, {"role": "user", "content": "Say hi."},
         {"role": "assistant", "content": "hi"}),
    ],
    "openai": [
        ({"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello \n"}),
        ({"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": "", "tool_calls": [
             {"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
         {"role": "tool", "content": "18C", "tool_call_id": "c1", "name": "get_weather"},
         {"role": "assistant", "content": "It is 18C."}),
    ],
    "chatml": [
        ({"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi\n"},
         {"role": "assistant", "content": " Hello "}),
        ({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}),
    ],
    "text": ["First document, with a comma.", "Second document."],
}
NESTED = {"conversations", "messages", "history", "tools"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: json.dumps(value) if key in NESTED and not isinstance(value, str) else value
                             for key, value in row.items()})
    return path


def make_source(container: str, rows: list[dict], tmp_path: Path):
    if container in ("parquet", "disk", "dataset"):  # arrow builders take the columns from row 1 only
        columns = list(dict.fromkeys(key for row in rows for key in row))
        rows = [{key: row.get(key) for key in columns} for row in rows]
    if container == "jsonl":
        return write_jsonl(tmp_path / "data.jsonl", rows)
    if container == "json":
        path = tmp_path / "data.json"
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
        return path
    if container == "csv":
        return write_csv(tmp_path / "data.csv", rows)
    if container == "parquet":
        path = tmp_path / "data.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if container == "disk":
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
        return str(tmp_path / "saved")
    if container == "dataset":
        return datasets.Dataset.from_list(rows)
    raise AssertionError(container)


CONTAINERS = ["jsonl", "json", "csv", "parquet", "disk", "dataset"]


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("name", list(ROWS))
def test_every_format_loads_from_every_container(name: str, container: str, tmp_path: Path) -> None:
    rows = load_rows(make_source(container, ROWS[name], tmp_path))
    assert len(rows) == len(ROWS[name])
    assert all(type(row) is dict for row in rows)
    report = detect_format(rows)
    assert report.name == name
    assert (report.rows_checked, report.total_rows) == (2, 2)
    examples = to_examples(rows, report)
    if name == "text":
        assert examples == EXPECTED["text"]
        return
    assert [example.messages for example in examples] == EXPECTED[name]
    if name == "sharegpt":
        assert examples[0].tools is None
        assert examples[1].tools == [{"type": "function", "function": tool} for tool in json.loads(GLAIVE_TOOLS)]


def test_txt_is_one_document_per_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes("\ufeffFirst doc.\r\n\n  \nSecond doc \u2028 same line.\nThird".encode())
    rows = load_rows(path)
    assert rows == [{"text": "First doc."}, {"text": "Second doc \u2028 same line."}, {"text": "Third"}]
    assert detect_format(rows).name == "text"


def test_json_variants(tmp_path: Path) -> None:
    rows = ROWS["alpaca"]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 1, "data": rows}), encoding="utf-8")
    assert load_rows(wrapped) == rows
    as_jsonl = write_jsonl(tmp_path / "lines.json", rows)
    assert load_rows(as_jsonl) == rows
    single = tmp_path / "single.json"
    single.write_text(json.dumps(ROWS["sharegpt"][0]), encoding="utf-8")
    assert load_rows(single) == [ROWS["sharegpt"][0]]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b"\n\n".join(json.dumps(r).encode() for r in rows) + b"\n\n")
    assert load_rows(bom) == rows


def test_save_to_disk_dataset_dict_picks_split(tmp_path: Path) -> None:
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS["text"]),
                          "test": datasets.Dataset.from_list(ROWS["text"][:1])}).save_to_disk(str(folder))
    assert len(load_rows(folder)) == 2
    assert len(load_rows(folder, split="test")) == 1
    with pytest.raises(BackpropagateError) as err:
        load_rows(folder, split="validation")
    assert err.value.code == "INPUT_INVALID_VALUE" and "'test'" in err.value.message


def test_in_memory_objects_become_plain_python() -> None:
    ds = datasets.Dataset.from_list([{"text": "a", "ids": [1, 2]}]).with_format("numpy")
    rows = load_rows(ds)
    assert rows == [{"text": "a", "ids": [1, 2]}]
    assert type(rows[0]["ids"]) is list and type(rows[0]["text"]) is str
    assert load_rows(datasets.DatasetDict({"train": ds})) == rows
    assert load_rows([{"text": "a"}]) == [{"text": "a"}]


def test_real_sample_files(shared_datasets: Path) -> None:
    expected = {"alpaca_en_demo.json": ("alpaca", 999), "identity.json": ("alpaca", 91),
                "glaive_toolcall_en_demo.json": ("sharegpt", 300), "c4_demo.jsonl": ("text", 300),
                "wiki_demo.txt": ("text", 30)}
    for file, (name, count) in expected.items():
        rows = load_rows(shared_datasets / file)
        report = detect_format(rows)
        assert (report.name, report.total_rows, len(to_examples(rows, report))) == (name, count, count), file


def test_real_glaive_keeps_tool_roles_and_tools(shared_datasets: Path) -> None:
    rows = load_rows(shared_datasets / "glaive_toolcall_en_demo.json")
    examples = to_examples(rows, detect_format(rows))
    assert all(isinstance(example, Conversation) for example in examples)
    first = examples[0]
    roles = [message["role"] for message in first.messages]
    assert roles[:6] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    call = json.loads(rows[0]["conversations"][3]["value"])  # the function_call, as a structured tool call
    assert first.messages[3]["content"] == "" and first.messages[3]["tool_calls"][0]["function"] == call
    assert first.messages[4]["name"] == "search_recipes"
    assert first.tools[0] == {"type": "function", "function": json.loads(rows[0]["tools"])[0]}
    assert sum(m["role"] == "tool" for e in examples for m in e.messages) == 211
    assert all(isinstance(example.tools, list) for example in examples)


def test_identity_placeholders_are_kept(shared_datasets: Path) -> None:
    rows = load_rows(shared_datasets / "identity.json")
    examples = to_examples(rows, detect_format(rows))
    assert "{{name}}" in examples[0].messages[-1]["content"]


# --- errors ------------------------------------------------------------------------------------
def raises(code: str, source, **kwargs) -> BackpropagateError:
    with pytest.raises(BackpropagateError) as err:
        load_rows(source, **kwargs)
    assert err.value.code == code, err.value
    return err.value


def test_missing_file(tmp_path: Path) -> None:
    err = raises("INPUT_FILE_NOT_FOUND", tmp_path / "nope.jsonl")
    assert "nope.jsonl" in err.message
    raises("INPUT_FILE_NOT_FOUND", "data/train.jsonl")
    raises("INPUT_FILE_NOT_FOUND", "./somewhere/data")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", ".txt"])
def test_empty_file(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    assert str(path) in raises("INPUT_DATASET_EMPTY", path).message


def test_file_without_rows(tmp_path: Path) -> None:
    (tmp_path / "blank.jsonl").write_text("\n  \n\n", encoding="utf-8")
    raises("INPUT_DATASET_EMPTY", tmp_path / "blank.jsonl")
    (tmp_path / "arr.json").write_text("[]", encoding="utf-8")
    raises("INPUT_DATASET_EMPTY", tmp_path / "arr.json")
    (tmp_path / "head.csv").write_text("instruction,output\n", encoding="utf-8")
    raises("INPUT_DATASET_EMPTY", tmp_path / "head.csv")
    raises("INPUT_DATASET_EMPTY", datasets.Dataset.from_list([]))


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"text": "ok"}\n{"text": "café"}\n'.encode("latin-1"))
    err = raises("INPUT_ENCODING_ERROR", path)
    assert str(path) in err.message and "line 2" in err.message
    txt = tmp_path / "latin.txt"
    txt.write_bytes("naïve".encode("latin-1"))
    raises("INPUT_ENCODING_ERROR", txt)


def test_broken_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",\n{"text": "d"}\n', encoding="utf-8")
    err = raises("INPUT_INVALID_JSON", path)
    assert str(path) in err.message and "line 3" in err.message


def test_non_object_rows(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n["not", "an", "object"]\n', encoding="utf-8")
    assert "line 2" in raises("INPUT_INVALID_JSON", tmp_path / "a.jsonl").message
    (tmp_path / "b.json").write_text('[{"text": "a"}, "oops"]', encoding="utf-8")
    assert "item 2" in raises("INPUT_INVALID_JSON", tmp_path / "b.json").message
    (tmp_path / "c.json").write_text('{"text": "a"', encoding="utf-8")
    raises("INPUT_INVALID_JSON", tmp_path / "c.json")
    (tmp_path / "d.json").write_text("42", encoding="utf-8")
    raises("INPUT_INVALID_JSON", tmp_path / "d.json")


def test_bad_json_cell_in_csv(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text('conversations\n"[{""from"": ""human""}]"\n"[{broken"\n', encoding="utf-8")
    err = raises("INPUT_INVALID_JSON", path)
    assert "row 2" in err.message and "conversations" in err.message


def test_unsupported_suffix_and_plain_folder(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK\x03\x04")
    assert ".xlsx" in raises("INPUT_UNSUPPORTED_FILE_TYPE", path).message
    raises("INPUT_UNSUPPORTED_FILE_TYPE", tmp_path)


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all")
    assert str(path) in raises("INPUT_FILE_CORRUPT", path).message


def test_hub_name_failure_names_the_dataset(tmp_path: Path) -> None:
    code = ("from backpropagate.data.load import load_rows\n"
            "from backpropagate.errors import BackpropagateError\n"
            "try:\n    load_rows('backpropagate-test/no-such-dataset')\n"
            "except BackpropagateError as e:\n    print(e.code, e.message)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("DEP_DATASET_LOAD_FAILED"), out.stderr[-2000:]
    assert "backpropagate-test/no-such-dataset" in out.stdout


# --- fingerprints ------------------------------------------------------------------------------
def test_fingerprint_tracks_file_bytes(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", ROWS["alpaca"])
    first = dataset_fingerprint(path)
    assert len(first) == 64 and dataset_fingerprint(str(path)) == first
    data = bytearray(path.read_bytes())
    data[12] ^= 1
    path.write_bytes(bytes(data))
    assert dataset_fingerprint(path) != first


def test_fingerprint_of_folder_and_objects(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS["text"]).save_to_disk(str(folder))
    first = dataset_fingerprint(folder)
    (folder / "cache-0123.arrow").write_bytes(b"written later by Dataset.map")
    assert dataset_fingerprint(folder) == first
    (folder / "dataset_info.json").write_text("{}", encoding="utf-8")
    assert dataset_fingerprint(folder) != first

    one = dataset_fingerprint(datasets.Dataset.from_list(ROWS["text"]))
    assert one == dataset_fingerprint(datasets.Dataset.from_list(ROWS["text"]))
    assert one == dataset_fingerprint(ROWS["text"])
    assert one != dataset_fingerprint(datasets.Dataset.from_list(ROWS["text"][:1]))
    with pytest.raises(BackpropagateError) as err:
        dataset_fingerprint(tmp_path / "missing.jsonl")
    assert err.value.code == "INPUT_FILE_NOT_FOUND"
