"""Perplexity scoring with a real tiny model trained (briefly, via Trainer) on clean English: the gibberish row
ranks worst and is the one dropped; packed batched scores equal one-at-a-time scores; bad input is coded."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from backpropagate import Trainer
from backpropagate.data.perplexity import perplexity_file, score_examples, select_by_perplexity
from backpropagate.data.rowset import load_rowset
from backpropagate.errors import BackpropagateError
from backpropagate.testing.corpus import corpus


def _gibberish(seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choice("qxzjvkwpfgh") for _ in range(rng.randint(3, 8))) for _ in range(12))


@pytest.fixture(scope="module")
def reference(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    """The tiny llama after 20 LoRA steps on clean English text; its adapter folder loads as a model.

    The output head is adapted too: the tiny model's frozen head caps its logits, so it could barely learn
    which tokens are rare otherwise.
    """
    folder = tmp_path_factory.mktemp("reference")
    clean = folder / "clean.jsonl"
    clean.write_text("".join(json.dumps({"text": line}) + "\n" for line in corpus()[::2]), encoding="utf-8")
    trainer = Trainer(str(tiny_llama), lora_r=64, lora_alpha=64, lora_dropout=0.0, learning_rate=1e-2,
                      batch_size=4, gradient_accumulation=1, max_seq_length=64, warmup_ratio=0.0,
                      lr_scheduler="constant", output_dir=folder / "out",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                      "lm_head"])
    run = trainer.train(str(clean), steps=20)
    assert run.final_loss < run.loss_history[0]
    return trainer, Path(run.output_path)


def test_gibberish_ranks_worst_and_is_dropped(reference: tuple[Trainer, Path], tiny_llama: Path, tmp_path: Path) -> None:
    trainer, adapter = reference
    texts = corpus()
    rows = [{"text": t} for t in texts[0:24:2] + texts[1:24:2]]  # seen and unseen clean lines
    rows.insert(9, {"text": _gibberish()})
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    result = perplexity_file(source, tmp_path / "kept.jsonl", str(adapter), max_percentile=96)
    values = [s.perplexity for s in result.scores]
    assert max(range(len(values)), key=values.__getitem__) == 9
    assert values[9] > 2 * max(v for i, v in enumerate(values) if i != 9)  # by a wide margin
    assert result.dropped.keys() == {9} and result.kept == [i for i in range(len(rows)) if i != 9]
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept == [r for i, r in enumerate(rows) if i != 9]
    scores = [json.loads(line) for line in (tmp_path / "kept.scores.jsonl").read_text().splitlines()]
    assert [s["row"] for s in scores] == list(range(1, len(rows) + 1))
    assert scores[9]["kept"] is False and scores[9]["reason"].startswith("perplexity")
    assert all(s["kept"] for i, s in enumerate(scores) if i != 9)

    # the in-memory trained model gives the same scores as the adapter folder loaded by name
    in_memory = score_examples(load_rowset(source).examples, trainer.model, trainer.tokenizer)
    assert [s.perplexity for s in in_memory] == pytest.approx(values, rel=1e-4)
    # training on clean text is what separates them: it lowered the clean rows' perplexity
    base = score_examples(load_rowset(source).examples, str(tiny_llama))
    clean_before = sum(s.perplexity for i, s in enumerate(base) if i != 9)
    assert sum(v for i, v in enumerate(values) if i != 9) < clean_before


def test_packed_scores_match_one_at_a_time(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    texts = corpus()[:9]
    packed = score_examples(texts, model, tokenizer, batch_size=2, max_seq_length=128)
    single = score_examples(texts, model, tokenizer, packing=False)
    for text, a, b in zip(texts, packed, single, strict=True):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        ids = torch.cat([ids, torch.tensor([[tokenizer.eos_token_id]])], dim=1)
        with torch.no_grad():
            expected = math.exp(float(model(input_ids=ids, labels=ids).loss))
        assert a.perplexity == pytest.approx(expected, rel=1e-4) and b.perplexity == pytest.approx(expected, rel=1e-4)
        assert a.tokens == ids.shape[1] - 1


def test_assistant_only_scores_fewer_tokens_than_all(tiny_llama: Path) -> None:
    from backpropagate.data.templates import tokenize_conversation

    rows = [{"messages": [{"role": "user", "content": "What is the capital of France?"},
                          {"role": "assistant", "content": "The capital of France is Paris."}]},
            {"messages": [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}]}]
    examples = load_rowset(rows).examples
    assistant = score_examples(examples, str(tiny_llama), on="assistant")
    everything = score_examples(examples, str(tiny_llama), on="all")
    from transformers import AutoTokenizer

    sample = tokenize_conversation(AutoTokenizer.from_pretrained(tiny_llama), examples[0])
    assert assistant[0].tokens == sample.num_label_tokens
    assert everything[0].tokens == len(sample.input_ids) - 1 > assistant[0].tokens
    assert assistant[1].tokens == 1  # an empty reply is its end-of-turn marker alone: the model learns to stop
    assert everything[1].tokens > 0 and everything[1].perplexity is not None


def test_thresholds_absolute_and_percentile() -> None:
    from backpropagate.data.perplexity import PerplexityScore

    scores = [PerplexityScore(i, float(p), math.log(p), 5) for i, p in enumerate([10, 20, 30, 40, 1000])]
    scores.append(PerplexityScore(5, None, None, 0, "no token to score"))
    assert select_by_perplexity(scores, max_perplexity=35).dropped.keys() == {3, 4}
    assert select_by_perplexity(scores, min_perplexity=15).dropped.keys() == {0}
    both = select_by_perplexity(scores, max_percentile=80, min_percentile=10)
    assert both.dropped.keys() == {0, 4} and 5 in both.kept  # unscored rows are kept
    assert select_by_perplexity(scores).kept == list(range(6))


@pytest.mark.parametrize("kwargs", [dict(max_perplexity=0), dict(max_percentile=101), dict(min_percentile=-1),
                                    dict(min_perplexity=50, max_perplexity=10), dict(min_percentile=90, max_percentile=10)])
def test_bad_thresholds(kwargs: dict) -> None:
    with pytest.raises(BackpropagateError) as info:
        select_by_perplexity([], **kwargs)
    assert info.value.code == "INPUT_INVALID_VALUE"


def test_unloadable_reference_model_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "d.jsonl"
    source.write_text(json.dumps({"text": "hello world"}) + "\n")
    for name in (str(tmp_path / "no-model"), str(source)):
        with pytest.raises(BackpropagateError) as info:
            perplexity_file(source, tmp_path / "out.jsonl", name)
        assert info.value.code == "DEP_MODEL_LOAD_FAILED"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
    with pytest.raises(BackpropagateError) as info:
        perplexity_file(source, tmp_path / "out.jsonl", "unused", on="middle")
    assert info.value.code == "INPUT_INVALID_VALUE"
