"""Quality filters on planted bad rows (hand-made and inside the shared sample datasets): each filter removes
exactly the rows planted for it, with a reason; bad arguments and unsafe outputs are coded errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from backpropagate.data import load_examples
from backpropagate.data.quality import (
    EmptyMessages,
    Language,
    MissingAssistant,
    Predicate,
    Repetition,
    TokenLength,
    TurnCount,
    apply_filters,
    build_filters,
    filter_file,
    repetition_ratio,
)
from backpropagate.data.rowset import example_text, load_rowset
from backpropagate.errors import BackpropagateError

CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def _conv(*turns: str) -> dict:
    roles = ["user", "assistant"]
    return {"messages": [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def alpaca_rows(shared_datasets: Path) -> list[dict]:
    return json.loads((shared_datasets / "alpaca_en_demo.json").read_text(encoding="utf-8"))


def test_each_filter_removes_exactly_its_planted_rows(tiny_llama: Path, alpaca_rows: list[dict], tmp_path: Path) -> None:
    clean = [_conv(r["instruction"] + ("\n\n" + r["input"] if r["input"] else ""), r["output"]) for r in alpaca_rows[:30]]
    counter = TokenLength(str(tiny_llama), max_tokens=1 << 20)
    longest = max(counter.count(load_rowset(clean).examples[i]) for i in range(len(clean)))
    long_text = " ".join(r["output"] for r in alpaca_rows[200:215])  # natural, non-repetitive English
    planted = {
        "empty": [_conv("   ", "I am happy to help with any question you have about cooking and baking.")],
        "no_assistant": [{"messages": [{"role": "user", "content": "What is the tallest mountain on Earth?"}]}],
        "turns": [_conv("Hi, can you help me plan a trip?", "Of course, where would you like to go?",
                        "I want to visit Japan in spring.", "Spring is a lovely time, the cherry trees bloom.",
                        "How long should I stay there?", "Two weeks gives you time for Tokyo and Kyoto.")],
        "tokens": [_conv("Summarize these notes for me, please.", long_text)],
        "language": [_conv("Quelle est la capitale de la France ?",
                           "La capitale de la France est Paris, une ville célèbre pour ses musées."),
                     _conv("Wie spät ist es in Berlin?",
                           "In Berlin ist es jetzt drei Uhr nachmittags, und die Sonne scheint.")],
        "repetition": [_conv("Tell me about your favourite food.", "I like it a lot. " * 15)],
        "no_secrets": [_conv("Share the forbidden launch codes.", "I cannot share anything like that with you.")],
    }
    rows = list(clean)
    for k, bad in enumerate(planted.values()):  # bad rows sit between clean ones
        for j, row in enumerate(bad):
            rows.insert(2 + 4 * k + j, row)
    expected = {name: [i for i, row in enumerate(rows) if any(row is b for b in bad)] for name, bad in planted.items()}
    source = _write_jsonl(tmp_path / "planted.jsonl", rows)

    filters = [EmptyMessages(), MissingAssistant(), TurnCount(max_turns=4), TokenLength(str(tiny_llama),
               max_tokens=longest), Language(["en"]), Repetition(max_ratio=0.5),
               Predicate(lambda ex: "forbidden" not in example_text(ex), name="no_secrets", reason="mentions secrets")]
    result = filter_file(source, tmp_path / "clean.jsonl", filters, report_json=tmp_path / "report.json")

    removed = {report.name: report.removed for report in result.reports}
    assert removed == expected
    assert result.kept == [i for i, row in enumerate(rows) if any(row is c for c in clean)]
    reasons = {report.name: next(iter(report.reasons.values())) for report in result.reports}
    assert reasons["empty"] == "turn 1 (user) is empty" and reasons["no_assistant"] == "no assistant reply"
    assert reasons["turns"] == "6 turns > max_turns=4" and reasons["no_secrets"] == "mentions secrets"
    assert re.fullmatch(rf"\d+ tokens > max_tokens={longest}", reasons["tokens"])
    assert reasons["language"].startswith("language fr")
    # written rows are the clean rows, normalized, and load back as OpenAI messages
    written = [json.loads(line) for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert written == clean
    assert load_examples(str(tmp_path / "clean.jsonl")).report.name == "openai"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows"] == len(rows) and report["kept"] == len(clean)
    assert {f["filter"]: f["removed"] for f in report["filters"]} == {k: len(v) for k, v in expected.items()}
    assert report["filters"][0]["examples"][0] == {"row": expected["empty"][0] + 1, "reason": "turn 1 (user) is empty"}


def test_token_length_counts_the_chat_template_tokens(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    row = _conv("What is the capital of France?", "The capital of France is Paris.")
    example = load_rowset([row]).examples[0]
    expected = len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
    flt = TokenLength(tokenizer, min_tokens=expected, max_tokens=expected)
    assert flt.count(example) == expected and flt.check(example) is None
    assert TokenLength(tokenizer, max_tokens=expected - 1).check(example) == f"{expected} tokens > max_tokens={expected - 1}"
    assert TokenLength(tokenizer, min_tokens=expected + 1).check(example) == f"{expected} tokens < min_tokens={expected + 1}"


def test_shared_alpaca_with_planted_rows(alpaca_rows: list[dict], tmp_path: Path) -> None:
    """The real 999 alpaca rows pass the default filters + English; the planted alpaca rows are removed."""
    bad = {
        "empty": {"instruction": "Name a primary colour.", "input": "", "output": "  \n "},
        "no_assistant": {"instruction": "Describe the water cycle in two sentences.", "input": "", "output": None},
        "language": {"instruction": "Décrivez le cycle de l'eau en deux phrases.", "input": "",
                     "output": "L'eau s'évapore des océans, forme des nuages, puis retombe en pluie sur la terre."},
        "repetition": {"instruction": "Write a slogan for a bakery.", "input": "",
                       "output": "Fresh bread every day, fresh bread every day, " * 8},
    }
    rows = list(alpaca_rows)
    positions = {}
    for k, (name, row) in enumerate(bad.items()):
        positions[name] = 100 + 250 * k
        rows.insert(positions[name], row)
    source = tmp_path / "alpaca_planted.json"
    source.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    result = filter_file(source, tmp_path / "out.jsonl", build_filters(None, languages="en"), keep_format=True)
    assert {r.name: r.removed for r in result.reports} == {
        "empty": [positions["empty"]], "no_assistant": [positions["no_assistant"]], "repetition": [positions["repetition"]],
        "language": [positions["language"]]}
    assert result.total == 1003 and len(result.kept) == 999
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == alpaca_rows  # --keep-format: the original alpaca keys, in order


def test_language_filter_on_the_bilingual_identity_set(shared_datasets: Path) -> None:
    rowset = load_rowset(shared_datasets / "identity.json")
    chinese = [i for i, row in enumerate(rowset.rows) if CJK.search(row["instruction"] + row["output"])]
    assert len(chinese) == 75  # the file's known mix: 75 Chinese rows, 16 English ones
    result = apply_filters(rowset.examples, [Language(["en"])])
    assert result.reports[0].removed == chinese
    assert apply_filters(rowset.examples, [Language(["en", "zh"])]).removed == 0


def test_tokens_filter_on_glaive_matches_direct_template_counts(tiny_llama: Path, shared_datasets: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rowset = load_rowset(shared_datasets / "glaive_toolcall_en_demo.json")
    lengths = [len(tokenizer(tokenizer.apply_chat_template(list(e.messages), tools=e.tools, tokenize=False),
                             add_special_tokens=False)["input_ids"]) for e in rowset.examples]
    limit = sorted(lengths)[-10]  # the 9 longest rows are over the limit
    result = apply_filters(rowset.examples, [TokenLength(tokenizer, max_tokens=limit)])
    assert result.reports[0].removed == [i for i, n in enumerate(lengths) if n > limit]
    assert len(result.reports[0].removed) == 9


def test_repetition_ratio_values() -> None:
    assert repetition_ratio("a b c d e f") == 0.0
    assert repetition_ratio("a b a b a b a b", n=2) == pytest.approx(1 - 2 / 7)
    assert repetition_ratio("one two") == 0.0


@pytest.mark.parametrize(("call", "code"), [
    (lambda: build_filters(["empty", "bogus"]), "INPUT_UNKNOWN_FILTER"),
    (lambda: build_filters(["tokens"]), "INPUT_INVALID_VALUE"),
    (lambda: Repetition(max_ratio=1.5), "INPUT_INVALID_VALUE"),
    (lambda: Repetition(ngram=0), "INPUT_INVALID_VALUE"),
    (lambda: TurnCount(min_turns=0), "INPUT_INVALID_VALUE"),
    (lambda: TurnCount(min_turns=3, max_turns=2), "INPUT_INVALID_VALUE"),
    (lambda: Language([]), "INPUT_INVALID_VALUE"),
    (lambda: Language(["en"], min_score=2), "INPUT_INVALID_VALUE"),
    (lambda: TokenLength("unused"), "INPUT_INVALID_VALUE"),
    (lambda: apply_filters(["x"], [EmptyMessages(), EmptyMessages()]), "INPUT_INVALID_VALUE"),
])
def test_bad_filter_arguments(call, code: str) -> None:
    with pytest.raises(BackpropagateError) as info:
        call()
    assert info.value.code == code


def test_unsafe_outputs_and_bad_inputs_are_refused(tmp_path: Path, shared_datasets: Path) -> None:
    source = _write_jsonl(tmp_path / "data.jsonl", [_conv("Hello there, how are you?", "Fine, thank you for asking.")])
    before = source.read_bytes()
    cases = [
        (dict(output=source), "INPUT_OUTPUT_IS_INPUT"),
        (dict(output=tmp_path / "out.json"), "INPUT_INVALID_VALUE"),
        (dict(output=tmp_path), "INPUT_OUTPUT_DIR_INVALID"),
        (dict(output=tmp_path / "out.jsonl", report_json=source), "INPUT_OUTPUT_IS_INPUT"),
    ]
    for kwargs, code in cases:
        with pytest.raises(BackpropagateError) as info:
            filter_file(source, filters=[EmptyMessages()], **kwargs)
        assert info.value.code == code
    assert source.read_bytes() == before and not (tmp_path / "out.jsonl").exists()
    existing = tmp_path / "existing.jsonl"
    existing.write_text("keep me\n")
    with pytest.raises(BackpropagateError) as info:
        filter_file(source, existing, [EmptyMessages()])
    assert info.value.code == "STATE_OUTPUT_EXISTS" and existing.read_text() == "keep me\n"
    filter_file(source, existing, [EmptyMessages()], overwrite=True)
    assert json.loads(existing.read_text()) == _conv("Hello there, how are you?", "Fine, thank you for asking.")
    with pytest.raises(BackpropagateError) as info:
        filter_file(shared_datasets / "README.md", tmp_path / "x.jsonl", [EmptyMessages()])
    assert info.value.code == "INPUT_UNSUPPORTED_FILE_TYPE"
