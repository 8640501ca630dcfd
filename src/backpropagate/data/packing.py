"""Padding-free packing: samples share rows, but never attention or loss.

Each row holds whole samples back to back with ``position_ids`` restarting at 0 for every sample.
transformers turns restarting position ids into a block-diagonal causal mask, but only when no
attention mask and no KV cache are passed: :func:`forward_packed` is the one place the model is called
and it always passes ``use_cache=False``. Targets are shifted *within* each sample, so the last token of
one sample is never asked to predict the first token of the next.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .templates import IGNORE_INDEX, TokenizedSample

# How many partly-filled rows stay open while packing: enough for near-full rows, bounded for speed.
_OPEN_ROWS = 64


@dataclass
class PackedRow:
    """Whole samples concatenated; ``targets`` are the already-shifted labels."""

    input_ids: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    sample_ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def add(self, sample_id: int, sample: TokenizedSample) -> None:
        n = len(sample.input_ids)
        self.input_ids.extend(sample.input_ids)
        self.position_ids.extend(range(n))
        self.targets.extend(shifted_targets(sample.labels))
        self.sample_ids.append(sample_id)


@dataclass(frozen=True)
class PackingPlan:
    rows: list[PackedRow]
    truncated: int  # samples cut to max_seq_length
    tokens: int

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for row in self.rows for t in row.targets if t != IGNORE_INDEX)


def shifted_targets(labels: Sequence[int]) -> list[int]:
    """targets[i] = labels[i + 1]; the last position of a sample predicts nothing."""
    return list(labels[1:]) + [IGNORE_INDEX]


def truncate(sample: TokenizedSample, max_len: int) -> TokenizedSample:
    return TokenizedSample(sample.input_ids[:max_len], sample.labels[:max_len])


def pack(samples: Sequence[TokenizedSample], max_seq_length: int, *, packing: bool = True,
         seed: int | None = 0) -> PackingPlan:
    """Rows of at most ``max_seq_length`` tokens. ``seed`` shuffles the sample order (None keeps it).

    Placement is best-fit over a bounded set of open rows, so rows come out nearly full while the
    sample order is mostly kept (it matters for curricula and for resuming at an exact position).
    """
    order = list(range(len(samples)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    truncated = 0
    rows: list[PackedRow] = []
    open_rows: list[PackedRow] = []
    for idx in order:
        sample = samples[idx]
        if len(sample.input_ids) > max_seq_length:
            sample = truncate(sample, max_seq_length)
            truncated += 1
        if not sample.input_ids:
            continue
        n = len(sample.input_ids)
        if not packing:
            row = PackedRow()
            row.add(idx, sample)
            rows.append(row)
            continue
        best = None
        for row in open_rows:
            room = max_seq_length - len(row)
            if room >= n and (best is None or room < max_seq_length - len(best)):
                best = row
        if best is None:
            best = PackedRow()
            rows.append(best)
            open_rows.append(best)
            if len(open_rows) > _OPEN_ROWS:
                open_rows.remove(max(open_rows, key=len))
        best.add(idx, sample)
        if len(best) == max_seq_length:
            open_rows.remove(best)
    return PackingPlan(rows=rows, truncated=truncated, tokens=sum(len(r) for r in rows))


def collate(rows: Sequence[PackedRow], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack rows into tensors, right-padding to the longest row.

    Padding gets its own restarting position ids (so it forms a separate block no real token sees)
    and ignored targets.
    """
    width = max(len(r) for r in rows)
    input_ids, position_ids, targets = [], [], []
    for row in rows:
        pad = width - len(row)
        input_ids.append(row.input_ids + [pad_token_id] * pad)
        position_ids.append(row.position_ids + list(range(pad)))
        targets.append(row.targets + [IGNORE_INDEX] * pad)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "position_ids": torch.tensor(position_ids, dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
    }
