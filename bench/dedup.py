"""Near-duplicate detection: backpropagate's bulk MinHash pipeline against the naive datasketch loop.

Synthetic corpus with a known answer: ``--docs`` documents of 60-200 words drawn from a Zipf vocabulary of
made-up words; 10% are planted near-duplicates of an earlier document (0-3.5% of the words replaced, so the
word-3-gram Jaccard similarity to the original is >= 0.8, checked exactly), and 5% are hard negatives
(half of one document + half of another: similar to both, a duplicate of neither).

Each method runs in its own fresh process (so peak RSS is its own) on the same documents:

* ``bulk``: ``backpropagate.data.dedup.near_duplicates`` (words hashed once, numpy shingles,
  ``MinHash.generator``, query-then-insert, recall-oriented bands + exact Jaccard check);
* ``naive``: one ``MinHash`` per document updated shingle by shingle (``update`` with the default SHA-1
  hash), ``MinHashLSH(threshold)`` with datasketch's default bands, query then insert one by one.

Both see the same normalized text and word 3-gram shingles. Precision and recall are measured on the
rows flagged as duplicates against the planted ones. Targets: recall >= 0.95, precision >= 0.95,
throughput >= 3x the naive loop.

    .venv/bin/python bench/dedup.py [--docs 50000] [--threshold 0.8] [--num-perm 128] [--shingle-size 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import re
import resource
import time
from typing import Any

WORD = re.compile(r"\w+")


def make_corpus(n: int, seed: int) -> tuple[list[str], dict[int, int], set[int]]:
    """Documents, the planted near-duplicates (copy -> original) and the hard negatives."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(40000)})
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(vocab))]
    docs: list[str] = []
    planted: dict[int, int] = {}
    negatives: set[int] = set()
    originals: list[int] = []
    for i in range(n):
        roll = rng.random()
        if i > 100 and roll < 0.10:
            original = rng.choice(originals)
            words = docs[original].split()
            for _ in range(int(len(words) * rng.uniform(0.0, 0.035))):
                words[rng.randrange(len(words))] = rng.choice(vocab)
            docs.append(" ".join(words))
            planted[i] = original
        elif i > 100 and roll < 0.15:
            a, b = (docs[j].split() for j in rng.sample(originals, 2))
            docs.append(" ".join(a[: len(a) // 2] + b[len(b) // 2:]))
            negatives.add(i)
        else:
            docs.append(" ".join(rng.choices(vocab, weights, k=rng.randint(60, 200))))
            originals.append(i)
    return docs, planted, negatives


def shingles(text: str, size: int) -> list[str]:
    words = WORD.findall(" ".join(text.casefold().split()))
    return [" ".join(words[i:i + size]) for i in range(max(1, len(words) - size + 1))]


def true_jaccard(a: str, b: str, size: int) -> float:
    x, y = set(shingles(a, size)), set(shingles(b, size))
    return len(x & y) / len(x | y)


def run_bulk(docs: list[str], args: argparse.Namespace) -> set[int]:
    from backpropagate.data.dedup import near_duplicates

    result = near_duplicates(docs, threshold=args.threshold, num_perm=args.num_perm, shingle_size=args.shingle_size)
    return set(range(len(docs))) - set(result.kept)


def run_naive(docs: list[str], args: argparse.Namespace) -> set[int]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm)
    flagged = set()
    for i, doc in enumerate(docs):
        m = MinHash(num_perm=args.num_perm)
        for shingle in shingles(doc, args.shingle_size):
            m.update(shingle.encode("utf-8"))
        if lsh.query(m):
            flagged.add(i)
        lsh.insert(i, m)
    return flagged


def measure(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs in a fresh process: build the corpus, then time one method and read this process's peak RSS."""
    import datasketch  # noqa: F401 - import cost is not part of the measurement

    import backpropagate.data.dedup  # noqa: F401

    docs, planted, _ = make_corpus(args.docs, args.seed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    flagged = (run_bulk if method == "bulk" else run_naive)(docs, args)
    seconds = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hits = len(flagged & planted.keys())
    return {"method": method, "seconds": seconds, "docs_per_s": len(docs) / seconds,
            "precision": hits / len(flagged) if flagged else 1.0, "recall": hits / len(planted),
            "flagged": len(flagged), "peak_rss_mb": rss_after / 1024, "rss_growth_mb": (rss_after - rss_before) / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle-size", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    docs, planted, negatives = make_corpus(args.docs, args.seed)
    lowest = min(true_jaccard(docs[copy], docs[original], args.shingle_size) for copy, original in planted.items())
    print(f"{len(docs)} docs, {len(planted)} planted near-duplicates (lowest Jaccard to their original "
          f"{lowest:.3f}, threshold {args.threshold}), {len(negatives)} hard negatives")
    context = multiprocessing.get_context("spawn")
    results = []
    for method in ("bulk", "naive"):
        with context.Pool(1) as pool:
            results.append(pool.apply(measure, (method, args)))
        r = results[-1]
        print(f"{r['method']:<6} {r['seconds']:8.1f} s  {r['docs_per_s']:8.0f} docs/s  precision {r['precision']:.4f}  "
              f"recall {r['recall']:.4f}  peak RSS {r['peak_rss_mb']:.0f} MB (+{r['rss_growth_mb']:.0f} MB)")
    bulk, naive = results
    print(f"throughput ratio bulk/naive: {bulk['docs_per_s'] / naive['docs_per_s']:.1f}x")
    print(json.dumps({"args": vars(args), "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
