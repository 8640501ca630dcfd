"""Exact and MinHash deduplication find exactly the planted (near-)duplicates, on hand-made rows and on the
shared sample datasets; the first row of each cluster is the one kept."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from backpropagate.data.dedup import (
    dedup_file,
    deduplicate,
    exact_duplicates,
    lsh_bands,
    near_duplicates,
    shingle_hashes,
)
from backpropagate.data.rowset import load_rowset
from backpropagate.errors import BackpropagateError


def _jaccard(a: str, b: str, n: int = 3) -> float:
    x, y = set(shingle_hashes(a, n).tolist()), set(shingle_hashes(b, n).tolist())
    return len(x & y) / len(x | y)


def test_exact_duplicates_ignore_case_and_whitespace_but_not_roles() -> None:
    rows = [
        {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."}]},
        {"messages": [{"role": "user", "content": "what   is 2+2?"}, {"role": "assistant", "content": "4\n"}]},
        {"messages": [{"role": "assistant", "content": "What is 2+2?"}, {"role": "user", "content": "4"}]},
        {"messages": [{"role": "user", "content": "NAME A FRUIT."}, {"role": "assistant", "content": "An apple."}]},
        {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    result = exact_duplicates(load_rowset(rows).examples)
    assert result.clusters == [[0, 2, 5], [1, 4]]
    assert result.kept == [0, 1, 3] and result.removed == 3


def test_minhash_finds_planted_near_duplicates_in_alpaca(shared_datasets: Path) -> None:
    rowset = load_rowset(shared_datasets / "alpaca_en_demo.json")
    base = exact_duplicates(rowset.examples).kept  # the file has 14 exact duplicates of its own
    texts = [rowset.examples[i].messages[-1]["content"] for i in base if len(rowset.examples[i].messages[-1]["content"].split()) >= 60][:150]
    rng = random.Random(7)
    docs = list(texts)
    planted: dict[int, int] = {}  # copy -> original
    unrelated: list[int] = []
    for k, original in enumerate(rng.sample(range(len(texts)), 24)):
        words = texts[original].split()
        if k < 16:  # near-duplicate: one word changed (Jaccard >= 0.8 is checked below)
            words[rng.randrange(len(words))] = "banana"
            planted[len(docs)] = original
        else:  # half of the original + half of another text: related to both, a duplicate of neither
            other = texts[(original + 1) % len(texts)].split()
            words = words[: len(words) // 2] + other[len(other) // 2:]
            unrelated.append(len(docs))
        docs.append(" ".join(words))
    for copy, original in planted.items():
        assert _jaccard(docs[copy], docs[original]) >= 0.8
    for doc in unrelated:
        assert max(_jaccard(docs[doc], other) for i, other in enumerate(docs) if i != doc) < 0.8

    result = near_duplicates(docs, threshold=0.8)
    assert sorted(set(range(len(docs))) - set(result.kept)) == sorted(planted)
    assert sorted(c for c in result.clusters) == sorted([original, copy] for copy, original in planted.items())
    assert exact_duplicates(docs).removed == 0  # only MinHash can see them


@pytest.mark.parametrize(("name", "duplicates"), [("alpaca_en_demo.json", 14), ("glaive_toolcall_en_demo.json", 35)])
def test_exact_duplicates_in_the_shared_files(shared_datasets: Path, name: str, duplicates: int) -> None:
    rowset = load_rowset(shared_datasets / name)
    identical = Counter(json.dumps(row, sort_keys=True) for row in rowset.rows)
    assert sum(n - 1 for n in identical.values()) == duplicates  # independent count: byte-identical rows
    result = exact_duplicates(rowset.examples)
    assert result.removed == duplicates
    for cluster in result.clusters:
        assert len({json.dumps(rowset.rows[i], sort_keys=True) for i in cluster}) == 1
    # exact duplicates are also near-duplicates, so MinHash alone finds at least those
    assert set(near_duplicates(rowset.examples).kept) <= set(result.kept)


def test_dedup_file_both_methods_and_report(shared_datasets: Path, tmp_path: Path) -> None:
    results = dedup_file(shared_datasets / "glaive_toolcall_en_demo.json", tmp_path / "out.jsonl", method="both",
                         keep_format=True, report_json=tmp_path / "clusters.json")
    exact, near = results
    assert exact.removed == 35 and near.kept == [i for i in exact.kept if i in near.kept]
    rows = json.loads((shared_datasets / "glaive_toolcall_en_demo.json").read_text())
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == [rows[i] for i in near.kept]
    report = json.loads((tmp_path / "clusters.json").read_text())
    assert report["rows"] == 300 and report["kept"] == len(near.kept)
    assert [step["method"] for step in report["steps"]] == ["exact", "minhash"]
    assert report["steps"][0]["cluster_rows"][0] == [i + 1 for i in exact.clusters[0]]


def test_lsh_bands_favour_recall_at_the_threshold() -> None:
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows <= 128 and 1 - (1 - threshold ** rows) ** bands >= 0.99


@pytest.mark.parametrize("kwargs", [dict(threshold=0), dict(threshold=1.2), dict(num_perm=4), dict(shingle_size=0),
                                    dict(method="fuzzy")])
def test_bad_dedup_arguments(kwargs: dict, tmp_path: Path) -> None:
    with pytest.raises(BackpropagateError) as info:
        deduplicate(["a b c"], **kwargs)
    assert info.value.code == "INPUT_INVALID_VALUE"
