"""The data report's counts match a hand-made dataset with known contents and independent counts on the
shared files; the verdict follows the documented rules; the HTML page embeds the histogram as a PNG."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from backpropagate.data.report import build_report, write_html
from backpropagate.data.rowset import load_rowset
from backpropagate.errors import BackpropagateError


def _conv(*turns: str) -> dict:
    return {"messages": [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]}


@pytest.fixture(scope="module")
def alpaca(shared_datasets: Path) -> list[dict]:
    rows = json.loads((shared_datasets / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    return [_conv(r["instruction"] + ("\n\n" + r["input"] if r["input"] else ""), r["output"]) for r in rows]


def test_counts_on_a_hand_made_set(alpaca: list[dict], tiny_llama: Path, tmp_path: Path) -> None:
    base = alpaca[:60]
    long_rows = [i for i, r in enumerate(base) if len(r["messages"][1]["content"].split()) > 80][:2]
    near = []
    for i in long_rows:
        words = base[i]["messages"][1]["content"].split()
        words[len(words) // 2] = "zebra"
        near.append(_conv(base[i]["messages"][0]["content"], " ".join(words)))
    french = [_conv(f"Question {k} : quelle est la capitale de la France ?",
                    f"Réponse {k} : la capitale de la France est Paris, une très belle ville.") for k in range(4)]
    rows = (base + [base[1], base[2], base[2]] + near + french
            + [{"messages": [{"role": "user", "content": "Where is the nearest train station from here?"}]}]
            + [_conv(" ", "I can help you with recipes, travel plans and homework questions."),
               _conv("Please list three colours.", "\t")]
            + [_conv("Plan a picnic with me.", "Sure, where would you like to go?", "To the park by the lake.",
                     "Great choice; bring sandwiches, fruit and a blanket.", "What about drinks?",
                     "Lemonade and water keep everyone happy.")])
    source = tmp_path / "handmade.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    report = build_report(source, tokenizer=str(tiny_llama), max_seq_length=300)
    assert report.format == "openai" and report.rows == 73 and report.length_unit == "tokens"
    assert report.turns == {1: 1, 2: 71, 6: 1}
    assert (report.exact_duplicates, report.near_duplicates, report.duplicate_clusters) == (3, 2, 4)
    assert report.languages == {"en": 69, "fr": 4}
    assert {f["name"]: f["flagged"] for f in report.filters} == {"empty": 2, "no_assistant": 2, "repetition": 0}
    assert report.removed_by_filters == 3  # the tab-only reply counts for both empty and no_assistant
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    lengths = [len(tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False),
                             add_special_tokens=False)["input_ids"]) for r in rows]
    assert sum(report.histogram["counts"]) == 73 and report.unrenderable == 0
    assert report.length_stats["max"] == max(lengths) and report.length_stats["min"] == min(lengths)
    assert report.longer_than_max == sum(n > 300 for n in lengths)
    assert report.verdict == "FAIL"
    assert report.reasons[0].startswith("2 conversations have no assistant reply")
    assert any(r.startswith("5 rows are duplicates") for r in report.reasons)
    assert json.loads(json.dumps(report.to_dict()))["turns"] == {"1": 1, "2": 71, "6": 1}


def test_clean_alpaca_slice_passes(alpaca: list[dict], tmp_path: Path) -> None:
    source = tmp_path / "clean.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in alpaca[:80]), encoding="utf-8")
    report = build_report(source)
    assert report.verdict == "PASS" and report.reasons == ["no rule fired"]
    words = [len(" ".join(m["content"] for m in r["messages"]).split()) for r in alpaca[:80]]
    assert report.length_unit == "words" and report.length_stats["max"] == max(words)
    assert "verdict     PASS" in report.to_text()


def test_shared_files(shared_datasets: Path) -> None:
    identity = build_report(shared_datasets / "identity.json", languages=["en"])
    rows = load_rowset(shared_datasets / "identity.json").rows
    chinese = sum(bool(re.search(r"[\u4e00-\u9fff]", r["instruction"] + r["output"])) for r in rows)
    assert identity.rows == 91 and identity.languages == {"zh": chinese, "en": 91 - chinese}
    assert {f["name"]: f["flagged"] for f in identity.filters}["language"] == chinese
    assert identity.verdict == "FAIL"  # 75 of 91 rows would be removed by the English-only filter
    wiki = build_report(shared_datasets / "wiki_demo.txt")
    assert wiki.format == "text" and wiki.rows == 30 and wiki.turns == {}
    assert wiki.verdict == "WARN" and any("only 30 rows" in r for r in wiki.reasons)


def test_html_embeds_the_histogram(alpaca: list[dict], tmp_path: Path) -> None:
    source = tmp_path / "d.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in alpaca[:20]), encoding="utf-8")
    report = build_report(source)
    page = write_html(report, tmp_path / "report.html").read_text()
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert f"Verdict: {report.verdict}" in page and "only 20 rows" in page
    with pytest.raises(BackpropagateError) as info:
        write_html(report, source)
    assert info.value.code == "INPUT_OUTPUT_IS_INPUT"
