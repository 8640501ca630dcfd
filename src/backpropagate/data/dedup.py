"""Remove exact and near-duplicate rows, keeping the first row of every cluster.

*Exact*: rows whose normalized text (NFKC, case-folded, whitespace collapsed, roles and tool schemas
included) hashes the same. *Near*: MinHash signatures over word shingles find candidate pairs through
datasketch's banded LSH; each candidate is then confirmed by the exact Jaccard similarity of the two rows'
shingle sets (>= ``threshold``), and confirmed pairs are joined into clusters (transitively). The bands
are chosen so that a pair exactly at the threshold becomes a candidate with probability >= 0.99 (recall),
and the exact check removes the extra candidates this lets in (precision). The shingle sets are kept in
memory for that check: 4 bytes per distinct shingle.

Speed comes from doing per-document work in bulk: every distinct word is hashed once, a document's
shingle hashes are combined with numpy, and signatures are computed with ``MinHash.generator`` (one
``update_batch`` per document instead of one ``update`` per shingle), each queried against the rows
before it and then inserted, so no signature is kept. ``bench/dedup.py`` measures this against the naive
datasketch loop.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackpropagateError, invalid_value
from .rowset import (
    Example,
    Progress,
    check_output_path,
    example_text,
    load_rowset,
    normalize_text,
    write_json,
    write_rows,
)

__all__ = ["DEDUP_METHODS", "DedupResult", "dedup_file", "deduplicate", "exact_duplicates", "near_duplicates",
           "lsh_bands", "shingle_hashes"]

DEDUP_METHODS = ("exact", "minhash", "both")
_WORD = re.compile(r"\w+")
# Odd 64-bit multipliers (from splitmix64) that mix the word hashes of a shingle position by position.
_MIX = np.array([0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93],
                dtype=np.uint64)


@dataclass
class DedupResult:
    """Rows kept (0-based, in order) and the clusters found; each cluster's first row is the one kept."""

    method: str
    total: int
    kept: list[int]
    clusters: list[list[int]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return self.total - len(self.kept)

    def to_dict(self, *, max_clusters: int = 100) -> dict[str, Any]:
        return {"method": self.method, "rows": self.total, "kept": len(self.kept), "removed": self.removed,
                "clusters": len(self.clusters), **self.params,
                "cluster_rows": [[i + 1 for i in c] for c in self.clusters[:max_clusters]]}


def exact_duplicates(examples: Sequence[Example], *, indices: Sequence[int] | None = None,
                     progress: Progress | None = None) -> DedupResult:
    """Clusters of rows with the same normalized text (and tool schemas)."""
    indices = list(range(len(examples))) if indices is None else list(indices)
    groups: dict[bytes, list[int]] = {}
    for done, index in enumerate(indices, start=1):
        example = examples[index]
        text = normalize_text(example_text(example))
        if not isinstance(example, str) and example.tools:
            text += "\0" + json.dumps(example.tools, sort_keys=True, ensure_ascii=False)
        groups.setdefault(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest(), []).append(index)
        if progress is not None:
            progress(done, len(indices))
    return _result("exact", len(examples), indices, [g for g in groups.values() if len(g) > 1], {})


class _WordHasher:
    """Stable 64-bit hashes of words, each distinct word hashed once."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def __call__(self, words: list[str]) -> np.ndarray:
        cache = self._cache
        try:  # after the first documents nearly every word is known
            return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))
        except KeyError:
            for word in set(words).difference(cache):
                cache[word] = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
            return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))


def shingle_hashes(text: str, shingle_size: int, hasher: Any = None) -> np.ndarray:
    """32-bit hashes of the word ``shingle_size``-grams of the normalized text (one shingle if it is shorter)."""
    hasher = hasher or _WordHasher()
    words = _WORD.findall(normalize_text(text))
    if not words:
        return np.empty(0, dtype=np.uint32)
    hashes = hasher(words)
    n = min(shingle_size, len(hashes))
    count = len(hashes) - n + 1
    combined = np.zeros(count, dtype=np.uint64)
    for k in range(n):
        combined = combined * _MIX[k % len(_MIX)] + hashes[k:k + count]  # wraps mod 2^64, as intended
    return ((combined >> np.uint64(32)) ^ (combined & np.uint64(0xFFFFFFFF))).astype(np.uint32)


def _identity(value: int) -> int:
    return value


def lsh_bands(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band): the longest bands for which a pair at ``threshold`` collides with
    probability >= ``recall``; longer bands mean fewer false candidates to check."""
    for rows in range(num_perm // 2, 0, -1):
        bands = num_perm // rows
        if bands >= 2 and 1.0 - (1.0 - threshold ** rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def near_duplicates(examples: Sequence[Example], *, threshold: float = 0.8, num_perm: int = 128,
                    shingle_size: int = 3, seed: int = 1, indices: Sequence[int] | None = None,
                    progress: Progress | None = None) -> DedupResult:
    """Clusters of rows whose word-shingle Jaccard similarity is >= ``threshold`` (MinHash LSH + exact check)."""
    _check_params(threshold, num_perm, shingle_size)
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError as exc:
        raise BackpropagateError("DEP_EXTRA_MISSING",
                                 "near-duplicate removal needs datasketch: pip install 'backpropagate[data]'.") from exc
    indices = list(range(len(examples))) if indices is None else list(indices)
    total = 2 * len(indices)
    hasher = _WordHasher()
    shingled: list[tuple[int, np.ndarray]] = []
    for done, index in enumerate(indices, start=1):
        hashes = np.unique(shingle_hashes(example_text(examples[index]), shingle_size, hasher))
        if len(hashes):
            shingled.append((index, hashes))
        if progress is not None and done % 256 == 0:
            progress(done, total)
    # One pass: each signature queries the rows before it, then joins the index. Signatures are not kept,
    # so memory holds the LSH buckets and the shingle sets only.
    signatures = MinHash.generator((hashes.tolist() for _, hashes in shingled), num_perm=num_perm, seed=seed,
                                   hashfunc=_identity)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=lsh_bands(threshold, num_perm))
    parent = list(range(len(shingled)))
    for position, signature in enumerate(signatures):
        mine = shingled[position][1]
        for other in lsh.query(signature):
            if _find(parent, other) != _find(parent, position) and _jaccard(mine, shingled[other][1]) >= threshold:
                _union(parent, position, other)
        lsh.insert(position, signature, check_duplication=False)
        if progress is not None and position % 256 == 0:
            progress(len(indices) + position, total)
    if progress is not None:
        progress(total, total)
    groups: dict[int, list[int]] = {}
    for position, (index, _) in enumerate(shingled):
        groups.setdefault(_find(parent, position), []).append(index)
    params = {"threshold": threshold, "num_perm": num_perm, "shingle_size": shingle_size, "seed": seed}
    return _result("minhash", len(examples), indices, [g for g in groups.values() if len(g) > 1], params)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted arrays of distinct shingle hashes."""
    common = np.intersect1d(a, b, assume_unique=True).size
    return common / (a.size + b.size - common)


def deduplicate(examples: Sequence[Example], *, method: str = "both", threshold: float = 0.8,
                num_perm: int = 128, shingle_size: int = 3, seed: int = 1,
                progress: Progress | None = None) -> list[DedupResult]:
    """Exact, MinHash, or both (exact first, MinHash on what is left); the last result's ``kept`` is final."""
    if method not in DEDUP_METHODS:
        raise invalid_value("method", method, f"one of {', '.join(DEDUP_METHODS)}")
    _check_params(threshold, num_perm, shingle_size)
    results = []
    indices: list[int] | None = None
    steps = [m for m in ("exact", "minhash") if method in (m, "both")]
    if method in ("exact", "both"):
        results.append(exact_duplicates(examples, progress=_share(progress, 0, len(steps))))
        indices = results[-1].kept
    if method in ("minhash", "both"):
        results.append(near_duplicates(examples, threshold=threshold, num_perm=num_perm, shingle_size=shingle_size,
                                       seed=seed, indices=indices, progress=_share(progress, len(steps) - 1, len(steps))))
    return results


def _share(progress: Progress | None, part: int, parts: int) -> Progress | None:
    """Report one step of a multi-step operation as its share of a single 0..1000 bar."""
    if progress is None:
        return None
    return lambda done, total: progress(round(1000 * (part + done / max(total, 1)) / parts), 1000)


def dedup_file(source: Any, output: str | Path, *, method: str = "both", threshold: float = 0.8,
               num_perm: int = 128, shingle_size: int = 3, seed: int = 1, keep_format: bool = False,
               report_json: str | Path | None = None, overwrite: bool = False, format: str | None = None,
               text_column: str | None = None, progress: Progress | None = None) -> list[DedupResult]:
    """Deduplicate a dataset into ``output`` (JSONL); the clusters optionally into ``report_json``."""
    if method not in DEDUP_METHODS:
        raise invalid_value("method", method, f"one of {', '.join(DEDUP_METHODS)}")
    _check_params(threshold, num_perm, shingle_size)
    rowset = load_rowset(source, format=format, text_column=text_column)
    out = check_output_path(output, inputs=[rowset.source], overwrite=overwrite)
    report_path = None if report_json is None else check_output_path(
        report_json, inputs=[rowset.source, out], overwrite=overwrite, what="report", suffixes=(".json",))
    results = deduplicate(rowset.examples, method=method, threshold=threshold, num_perm=num_perm,
                          shingle_size=shingle_size, seed=seed, progress=progress)
    write_rows(rowset, results[-1].kept, out, keep_format=keep_format)
    if report_path is not None:
        write_json(report_path, {"input": str(source), "output": str(out), "rows": len(rowset),
                                 "kept": len(results[-1].kept), "steps": [r.to_dict() for r in results]})
    return results


def _result(method: str, total: int, indices: list[int], clusters: list[list[int]],
            params: dict[str, Any]) -> DedupResult:
    clusters = sorted((sorted(c) for c in clusters), key=lambda c: c[0])
    dropped = {i for c in clusters for i in c[1:]}
    return DedupResult(method, total, [i for i in indices if i not in dropped], clusters, params)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union(parent: list[int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def _check_params(threshold: Any, num_perm: Any, shingle_size: Any) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
        raise invalid_value("threshold", threshold, "a number in (0, 1)")
    if isinstance(num_perm, bool) or not isinstance(num_perm, int) or not 16 <= num_perm <= 1024:
        raise invalid_value("num_perm", num_perm, "an integer in [16, 1024]")
    if isinstance(shingle_size, bool) or not isinstance(shingle_size, int) or not 1 <= shingle_size <= 32:
        raise invalid_value("shingle_size", shingle_size, "an integer in [1, 32]")
