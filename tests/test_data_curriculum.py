"""Curriculum order is monotone in the difficulty score, buckets split it easy -> hard, and
``Trainer.train(curriculum=True)`` really trains on the easiest rows first (checked against the base model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from backpropagate import Trainer
from backpropagate.data.curriculum import (
    curriculum_buckets,
    curriculum_file,
    curriculum_order,
    difficulty_scores,
    length_score,
    load_scores,
    training_order,
)
from backpropagate.data.packing import collate, pack
from backpropagate.data.rowset import load_rowset, message_text
from backpropagate.data.templates import TokenizedSample, tokenize_examples
from backpropagate.errors import BackpropagateError
from backpropagate.training.chunked_loss import forward_packed
from backpropagate.training.engine import DataStream


def _nondecreasing(values: list[float]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_length_order_is_monotone_on_glaive(shared_datasets: Path) -> None:
    examples = load_rowset(shared_datasets / "glaive_toolcall_en_demo.json").examples
    scores = difficulty_scores(examples)
    order = curriculum_order(examples)
    assert sorted(order) == list(range(len(examples)))
    assert _nondecreasing([scores[i] for i in order])
    # the documented formula: words * (1 + 0.25 * (replies - 1)); a tool call's words are the call's
    first = examples[0]
    words = sum(len(message_text(m).split()) for m in first.messages)
    replies = sum(m["role"] == "assistant" for m in first.messages)
    assert scores[0] == pytest.approx(words * (1 + 0.25 * (replies - 1)))
    assert replies > 1 and scores[0] > length_score(words, 1)  # more replies, harder


def test_token_scores_and_perplexity_scores(tiny_llama: Path, shared_datasets: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    examples = load_rowset(shared_datasets / "identity.json").examples
    order = curriculum_order(examples, tokenizer=tokenizer)
    lengths = [len(s.input_ids) for s in tokenize_examples(tokenizer, examples, train_on_responses=False)]
    assert _nondecreasing([lengths[i] for i in order])  # one reply each: the score is the token count
    perplexities = [random.Random(i).uniform(1, 100) for i in range(len(examples))]
    perplexities[5] = None  # unscored rows go last
    by_ppl = curriculum_order(examples, scores=perplexities)
    assert by_ppl[-1] == 5 and _nondecreasing([perplexities[i] for i in by_ppl[:-1]])
    ties = curriculum_order(examples, scores=[1.0] * len(examples))
    assert ties == list(range(len(examples)))  # stable


def test_buckets_partition_easy_to_hard(shared_datasets: Path) -> None:
    examples = load_rowset(shared_datasets / "alpaca_en_demo.json").examples
    scores = difficulty_scores(examples)
    buckets = curriculum_buckets(examples, 4)
    assert sorted(i for b in buckets for i in b) == list(range(len(examples)))
    assert [len(b) for b in buckets] == [250, 250, 250, 249]
    for easier, harder in zip(buckets, buckets[1:], strict=False):
        assert max(scores[i] for i in easier) <= min(scores[i] for i in harder)
    for n in (0, 1000, 2.5):
        with pytest.raises(BackpropagateError) as info:
            curriculum_buckets(examples, n)
        assert info.value.code == "INPUT_INVALID_VALUE"


def test_curriculum_file_with_perplexity_scores_and_buckets(shared_datasets: Path, tmp_path: Path) -> None:
    source = shared_datasets / "identity.json"
    rows = json.loads(source.read_text())
    perplexities = [float((i * 37) % 91) + 1 for i in range(len(rows))]
    scores = tmp_path / "s.scores.jsonl"
    scores.write_text("".join(json.dumps({"row": i + 1, "perplexity": p}) + "\n" for i, p in enumerate(perplexities)))
    result = curriculum_file(source, tmp_path / "c.jsonl", scores=scores, buckets=3, keep_format=True)
    written = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["difficulty"] for r in written] == sorted(perplexities) and result.source == "perplexity"
    assert [{k: v for k, v in r.items() if k not in ("difficulty", "bucket")} for r in written] == \
        [rows[i] for i in result.order]
    assert [r["bucket"] for r in written] == [1] * 31 + [2] * 30 + [3] * 30
    for k in (1, 2, 3):
        part = [json.loads(line) for line in (tmp_path / f"c.bucket-{k}.jsonl").read_text().splitlines()]
        assert part == [r for r in written if r["bucket"] == k]
    # Trainer's order reads the difficulty column back
    shuffled = written[::-1]
    (tmp_path / "shuffled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shuffled))
    examples = load_rowset(tmp_path / "shuffled.jsonl").examples
    assert training_order(str(tmp_path / "shuffled.jsonl"), examples, [1] * len(examples)) == \
        list(range(len(rows)))[::-1]
    scores.write_text("".join(json.dumps({"row": i + 1, "perplexity": p}) + "\n" for i, p in enumerate(perplexities[:5])))
    with pytest.raises(BackpropagateError) as info:
        load_scores(scores, len(rows))
    assert info.value.code == "INPUT_INVALID_VALUE"


def test_data_stream_without_shuffle_keeps_the_order() -> None:
    samples = [TokenizedSample(list(range(1, n + 1)), list(range(1, n + 1))) for n in (5, 9, 3, 12, 7, 4, 8, 6)]
    stream = DataStream(samples, 64, packing=False, seed=3, shuffle=False)
    rows, _ = stream.take(len(samples))
    assert [r.sample_ids for r in rows] == [[i] for i in range(len(samples))]
    packed = DataStream(samples, 16, packing=True, seed=3, shuffle=False)
    firsts = [r.sample_ids[0] for r in packed._rows]
    assert firsts == sorted(firsts)  # rows open in curriculum order; later short samples may fill gaps
    shuffled = DataStream(samples, 64, packing=False, seed=3)
    assert [r.sample_ids[0] for r in shuffled.take(len(samples))[0]] != list(range(len(samples)))


def test_trainer_curriculum_trains_on_the_easiest_rows_first(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    topics = ["rivers", "bread", "stars", "music", "chess", "trains", "bees", "tea"]
    difficulty = [5.0, 2.0, 8.0, 9.0, 7.0, 3.0, 1.0, 4.0]
    rows = [{"messages": [{"role": "user", "content": f"Tell me one fact about {t}."},
                          {"role": "assistant", "content": f"Here is a short fact about {t}, as you asked."}],
             "difficulty": d} for t, d in zip(topics, difficulty, strict=True)]
    data = tmp_path / "ordered.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = Trainer(str(tiny_llama), lora_r=4, lora_alpha=8, lora_dropout=0.0, batch_size=1,
                      gradient_accumulation=1, max_seq_length=64, output_dir=tmp_path / "out")
    run = trainer.train(str(data), steps=1, curriculum=True)

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    samples = tokenize_examples(tokenizer, load_rowset(data).examples)
    ordered = [samples[i] for i in sorted(range(len(rows)), key=difficulty.__getitem__)]
    first_row = pack(ordered, 64, seed=None).rows[0]
    assert first_row.sample_ids[0] == 0  # the easiest row (difficulty 1.0: "bees") opens the first batch
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():  # LoRA starts as a no-op, so step 1's loss is the base model's loss on that row
        loss_sum, n = forward_packed(base, collate([first_row], tokenizer.pad_token_id or tokenizer.eos_token_id))
    assert run.loss_history[0] == pytest.approx(float(loss_sum) / n, rel=1e-4)
    # without the curriculum the seeded shuffle would have opened with other rows, and another loss
    shuffled_row = pack(samples, 64, seed=42).rows[0]
    assert difficulty.index(min(difficulty)) not in shuffled_row.sample_ids
    with torch.no_grad():
        other_sum, other_n = forward_packed(base, collate([shuffled_row], tokenizer.pad_token_id or tokenizer.eos_token_id))
    assert float(other_sum) / other_n != pytest.approx(run.loss_history[0], rel=1e-4)
