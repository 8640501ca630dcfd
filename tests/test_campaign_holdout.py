"""A campaign over datasets that share rows holds out only rows that occur once in the campaign's data:
it runs (with the duplicates counted in its report) instead of stopping with SLAO_HOLDOUT_OVERLAP, which is
kept for a run whose every row is repeated elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backpropagate import BackpropagateError, Trainer
from backpropagate.continual.campaign_state import cut_slices
from backpropagate.data import load_examples
from backpropagate.data.rowset import example_text, normalize_text


def _write(path: Path, numbers: range) -> str:
    rows = [{"messages": [{"role": "user", "content": f"What is {n} plus one?"},
                          {"role": "assistant", "content": f"It is {n + 1}."}]} for n in numbers]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def overlapping(tmp_path: Path) -> list[str]:
    """Two files sharing 4 rows (8-11); the second repeats one of its own rows too (with other spacing)."""
    first = _write(tmp_path / "a.jsonl", range(0, 12))
    second = _write(tmp_path / "b.jsonl", range(8, 20))
    with open(second, "a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "What is  15 plus one?"},
                                         {"role": "assistant", "content": "It is 16."}]}) + "\n")
    return [first, second]


def _key(example: object) -> str:
    return normalize_text(example_text(example))


def test_held_out_rows_occur_nowhere_else_and_duplicates_are_counted(overlapping: list[str]) -> None:
    loaded = [load_examples(p) for p in overlapping]
    for seed in range(6):
        slices = cut_slices(loaded, overlapping, num_runs=2, samples_per_run=None, eval_fraction=0.5, seed=seed)
        trained = [_key(r) for s in slices for r in s.train]
        held = [_key(r) for s in slices for r in s.holdout]
        assert held and not set(held) & set(trained) and len(set(held)) == len(held)
        assert [s.duplicates for s in slices] == [4, 6]  # b: 8-11 and both copies of 15
        assert [len(s.holdout) for s in slices] == [6, 6]  # round(12 * 0.5), round(13 * 0.5) of the eligible


def test_no_duplicates_keeps_the_earlier_hold_out(tmp_path: Path) -> None:
    """Without repeated rows the draw is the one campaigns always made, so older campaigns resume."""
    import random

    path = _write(tmp_path / "c.jsonl", range(40))
    slices = cut_slices([load_examples(path)], [path], num_runs=2, samples_per_run=20, eval_fraction=0.2, seed=7)
    for i, s in enumerate(slices, start=1):
        rows = load_examples(path).examples[(i - 1) * 20:i * 20]
        picked = set(random.Random(7 + i).sample(range(20), 4))
        assert s.holdout == [r for k, r in enumerate(rows) if k in picked] and s.duplicates == 0


def test_a_campaign_over_files_that_share_rows_runs(tiny_llama: Path, overlapping: list[str],
                                                     tmp_path: Path) -> None:
    result = Trainer(str(tiny_llama), output_dir=tmp_path / "out", lora_r=4, lora_alpha=8, batch_size=2,
                     gradient_accumulation=1, max_seq_length=64, save_steps=0, report_to="none").multi_run(
        overlapping, steps_per_run=1, eval_fraction=0.25)
    assert len(result.run_adapters) == 2
    assert any("never held out" in n and "run 1: 4" in n and "run 2: 6" in n for n in result.report.notes)


def test_a_run_whose_every_row_is_repeated_is_still_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", range(10))
    loaded = load_examples(path)
    with pytest.raises(BackpropagateError) as info:
        cut_slices([loaded, loaded], [path, path], num_runs=2, samples_per_run=None, eval_fraction=0.2, seed=0)
    assert info.value.code == "SLAO_HOLDOUT_OVERLAP" and "dedup" in info.value.hint
