"""Packing parity: a sample inside a packed row behaves exactly as it does alone."""

from __future__ import annotations

import pytest
import torch

from backpropagate.data.packing import collate, pack, shifted_targets
from backpropagate.data.templates import IGNORE_INDEX, TokenizedSample
from backpropagate.training.chunked_loss import forward_packed


@pytest.fixture(scope="module")
def model(tiny_llama):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    m.eval()
    return m


def _samples(n: int, seed: int = 0) -> list[TokenizedSample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 40, (1,), generator=g))
        ids = torch.randint(10, 500, (length,), generator=g).tolist()
        labels = [t if (j > length // 2 or i % 3 == 0) else IGNORE_INDEX for j, t in enumerate(ids)]
        out.append(TokenizedSample(ids, labels))
    return out


def test_packed_logits_equal_separate_logits(model) -> None:
    samples = _samples(12)
    plan = pack(samples, max_seq_length=128, seed=1)
    assert len(plan.rows) < len(samples)  # rows really hold several samples
    batch = collate(plan.rows, pad_token_id=0)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    for r, row in enumerate(plan.rows):
        offset = 0
        for sid in row.sample_ids:
            ids = samples[sid].input_ids
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[r, offset:offset + len(ids)], alone, atol=1e-5, rtol=1e-5)
            offset += len(ids)


def test_packed_loss_is_token_weighted_mean_of_separate_losses(model) -> None:
    samples = _samples(10, seed=3)
    plan = pack(samples, max_seq_length=100, seed=0)
    total, count = 0.0, 0
    for row_group in (plan.rows[i:i + 2] for i in range(0, len(plan.rows), 2)):
        with torch.no_grad():
            loss_sum, n = forward_packed(model, collate(row_group, pad_token_id=0))
        total, count = total + float(loss_sum), count + n
    packed_mean = total / count
    sep_total, sep_count = 0.0, 0
    for s in samples:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([s.input_ids]), use_cache=False).logits[0]
        targets = torch.tensor(shifted_targets(s.labels))
        loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        k = int((targets != IGNORE_INDEX).sum())
        if k:
            sep_total, sep_count = sep_total + float(loss), sep_count + k
    assert count == sep_count
    assert packed_mean == pytest.approx(sep_total / sep_count, rel=1e-5)


def test_use_cache_trap_is_closed(model) -> None:
    """With a KV cache transformers ignores the boundaries; forward_packed must never fall into that."""
    samples = _samples(2, seed=5)
    plan = pack(samples, max_seq_length=200, seed=None)
    assert len(plan.rows) == 1
    batch = collate(plan.rows, pad_token_id=0)
    second = slice(len(samples[0].input_ids), len(samples[0].input_ids) + len(samples[1].input_ids))
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([samples[1].input_ids]), use_cache=False).logits[0]
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
        ours_sum, _ = forward_packed(model, batch)
        safe = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    assert not torch.allclose(leaky[0, second], alone, atol=1e-3)  # the trap is real
    torch.testing.assert_close(safe[0, second], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(ours_sum)


def test_targets_never_cross_samples() -> None:
    a = TokenizedSample([1, 2, 3], [1, 2, 3])
    b = TokenizedSample([4, 5], [4, 5])
    plan = pack([a, b], max_seq_length=10, seed=None)
    row = plan.rows[0]
    assert row.position_ids == [0, 1, 2, 0, 1]
    assert row.targets == [2, 3, IGNORE_INDEX, 5, IGNORE_INDEX]


def test_truncation_is_counted_and_rows_respect_the_limit() -> None:
    samples = _samples(30, seed=7) + [TokenizedSample(list(range(10, 90)), list(range(10, 90)))]
    plan = pack(samples, max_seq_length=48, seed=0)
    assert plan.truncated >= 1
    assert all(len(row) <= 48 for row in plan.rows)
    assert sorted(s for row in plan.rows for s in row.sample_ids) == list(range(len(samples)))
    padding = 1 - plan.tokens / (len(plan.rows) * 48)
    assert padding < 0.1  # rows come out nearly full


def test_no_packing_gives_one_sample_per_row() -> None:
    plan = pack(_samples(5), max_seq_length=64, packing=False, seed=None)
    assert [row.sample_ids for row in plan.rows] == [[0], [1], [2], [3], [4]]
