"""Multi-run SLAO campaigns on a real tiny model through peft: the merged adapter follows the paper's formula,
a campaign killed in run 2 resumes to the same result, and bad input is a coded error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate import Trainer, runs
from backpropagate.errors import BackpropagateError
from process_helpers import Crash
from support.faults import faults

ARGS = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "gradient_accumulation": 1, "max_seq_length": 96,
        "save_steps": 0, "learning_rate": 5e-3, "seed": 3}
CAMPAIGN = {"num_runs": 3, "steps_per_run": 3, "samples_per_run": 20, "eval_fraction": 0.2}


@pytest.fixture(scope="module")
def campaign(tiny_llama: Path, identity_rows: Path, tmp_path_factory: pytest.TempPathFactory):
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path_factory.mktemp("campaign"), **ARGS)
    return trainer, trainer.multi_run(identity_rows, **CAMPAIGN)


def _pairs(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def test_merged_adapter_is_the_slao_formula_over_the_saved_runs(campaign) -> None:
    trainer, result = campaign
    assert result.num_runs == 3 and [len(h) for h in result.loss_histories] == [3, 3, 3]
    assert result.merge_weights == pytest.approx([1.0, 1 / math.sqrt(2), 1 / math.sqrt(3)])
    per_run = [_pairs(p) for p in result.run_adapters]
    merged = _pairs(result.output_path)
    assert merged.keys() == per_run[0].keys() and any(".lora_A." in k for k in merged)
    for key in merged:
        if ".lora_A." in key:  # A_merged = the last fine-tuned A
            expected = per_run[2][key]
        else:  # B_merged = B_1, then B += 1/sqrt(i) (B_ft,i - B)
            expected = per_run[0][key].clone()
            for i in (2, 3):
                expected = expected + (1 / math.sqrt(i)) * (per_run[i - 1][key] - expected)
        torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6)
    # each run started from the previous one: the runs' B differ, and run 2's A has moved off run 1's
    key_b = next(k for k in merged if ".lora_B." in k)
    assert not torch.equal(per_run[0][key_b], per_run[1][key_b])


def test_merged_folder_is_a_plain_peft_adapter_that_reloads(campaign, tiny_llama: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer, result = campaign
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), result.output_path)
    from backpropagate.continual.peft_bridge import lora_pairs

    live, loaded = lora_pairs(trainer.model), lora_pairs(reloaded)
    assert live.keys() == loaded.keys()
    for name in live:
        assert torch.equal(live[name][0], loaded[name][0]) and torch.equal(live[name][1], loaded[name][1])


def test_forgetting_report_is_printed_saved_and_in_the_history(campaign) -> None:
    trainer, result = campaign
    report = result.report
    assert [len(row) for row in report.accuracy] == [1, 2, 3] and report.merge_mode == "slao"
    assert all(0.0 <= v <= 1.0 for row in report.accuracy for v in row)
    summary = report.summary()["accuracy"]
    assert summary["bwt"] == pytest.approx(sum(report.accuracy[2][j] - report.accuracy[j][j] for j in range(2)) / 2)
    saved = json.loads(Path(result.forgetting_json).read_text())
    assert saved["accuracy"] == report.accuracy and Path(result.forgetting_png).stat().st_size > 1000
    record = runs.get(result.run_id, trainer.output_dir)
    assert record.status == "completed" and record.completed_steps == 9 and len(record.loss_history) == 9
    assert record.details["kind"] == "multi_run" and record.details["forgetting"]["accuracy"] == report.accuracy
    assert [r["train_rows"] + r["holdout_rows"] for r in record.details["runs"]] == [20, 20, 20]
    assert "AA" in report.to_text() and "BWT" in report.to_text()


def test_export_works_right_after(campaign) -> None:
    pytest.importorskip("llama_cpp")
    trainer, result = campaign
    exported = trainer.export("gguf", quantization="f16", overwrite=True)
    assert exported.report.passed
    card = json.loads((exported.path.parent / "training_run.json").read_text())
    assert card["run_id"] == result.run_id


def test_a_campaign_killed_in_run_2_resumes_to_the_same_adapter(tiny_llama: Path, identity_rows: Path,
                                                                tmp_path: Path, campaign) -> None:
    _, reference = campaign
    run = {"i": 0}

    def crash_in_run_2(where: str, step: int, detail: object) -> None:
        if where == "run_start":
            run["i"] = step
        elif run["i"] == 2 and step == 2:
            raise Crash

    out = tmp_path / "out"
    with faults(crash_in_run_2), pytest.raises(Crash):
        Trainer(str(tiny_llama), output_dir=out, **ARGS).multi_run(identity_rows, **CAMPAIGN)
    (interrupted,) = runs.list(out)
    assert interrupted.status == "interrupted" and interrupted.completed_steps == 3
    # Started again the same way, without naming it: the unfinished campaign is found and continued in run 2.
    result = Trainer(str(tiny_llama), output_dir=out, **ARGS).multi_run(identity_rows, **CAMPAIGN)
    assert result.run_id == interrupted.run_id and runs.get(result.run_id, out).status == "completed"
    got, want = _pairs(result.output_path), _pairs(reference.output_path)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert result.loss_histories == reference.loss_histories
    assert result.report.accuracy == reference.report.accuracy


def test_resume_by_id_refuses_other_settings(tiny_llama: Path, identity_rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def crash(where: str, step: int, detail: object) -> None:
        if where == "run_start" and step == 2:
            raise Crash

    with faults(crash), pytest.raises(Crash):
        Trainer(str(tiny_llama), output_dir=out, **ARGS).multi_run(identity_rows, **CAMPAIGN)
    run_id = runs.list(out)[0].run_id
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), output_dir=out, **ARGS).multi_run(
            resume=run_id[:8], lambda_schedule="1/i", **CAMPAIGN)
    assert info.value.code == "INPUT_RESUME_MISMATCH" and "lambda_schedule" in info.value.message
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), output_dir=out, **{**ARGS, "lora_r": 8}).multi_run(resume=run_id, **CAMPAIGN)
    assert info.value.code == "INPUT_RESUME_MISMATCH" and "lora_r" in info.value.message


def test_merge_mode_none_is_plain_sequential_lora(tiny_llama: Path, identity_rows: Path, tmp_path: Path) -> None:
    result = Trainer(str(tiny_llama), output_dir=tmp_path, **ARGS).multi_run(
        identity_rows, merge_mode="none", num_runs=2, steps_per_run=2, samples_per_run=10)
    assert result.merge_weights == [1.0, 1.0] and result.report.merge_mode == "none"
    last, merged = _pairs(result.run_adapters[-1]), _pairs(result.output_path)
    assert all(torch.equal(last[k], merged[k]) for k in merged)


def _code(fn, *args, **kwargs) -> BackpropagateError:
    with pytest.raises(BackpropagateError) as info:
        fn(*args, **kwargs)
    return info.value


def test_bad_input_is_a_coded_error_before_training(tiny_llama: Path, identity_rows: Path, tmp_path: Path) -> None:
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path, **ARGS)
    assert _code(trainer.multi_run, identity_rows, num_runs=0).code == "INPUT_INVALID_VALUE"
    assert _code(trainer.multi_run, identity_rows, merge_mode="average").code == "INPUT_INVALID_VALUE"
    assert _code(trainer.multi_run, identity_rows, lambda_schedule="1/log(i)").code == "INPUT_INVALID_VALUE"
    assert _code(trainer.multi_run, identity_rows, eval_fraction=0.9).code == "INPUT_INVALID_VALUE"
    err = _code(trainer.multi_run, identity_rows, num_runs=5, samples_per_run=30)
    assert err.code == "INPUT_NOT_ENOUGH_DATA" and "91 rows" in err.message and "enough for 3 runs" in err.message
    err = _code(trainer.multi_run, [identity_rows, identity_rows], samples_per_run=200)
    assert err.code == "INPUT_NOT_ENOUGH_DATA" and "has 91 rows" in err.message
    err = _code(trainer.multi_run, [identity_rows, identity_rows], samples_per_run=20)  # the same rows in both runs
    assert err.code == "SLAO_HOLDOUT_OVERLAP"
    assert _code(Trainer(str(tiny_llama), output_dir=tmp_path, mode="full").multi_run, identity_rows).code == \
        "SLAO_UNSUPPORTED_METHOD"
    err = _code(Trainer(str(tiny_llama), output_dir=tmp_path, use_dora=True).multi_run, identity_rows)
    assert err.code == "SLAO_UNSUPPORTED_METHOD" and "experimental" in err.hint
    assert trainer.model is None and not runs.list(tmp_path)  # nothing was loaded or recorded


def test_a_campaign_refuses_several_processes(tiny_llama: Path, identity_rows: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets for each of its processes
    err = _code(Trainer(str(tiny_llama), output_dir=tmp_path).multi_run, identity_rows)
    assert err.code == "INPUT_INVALID_VALUE" and "one process" in err.message


def test_experimental_dora_is_flagged_in_the_report(tiny_llama: Path, identity_rows: Path, tmp_path: Path) -> None:
    result = Trainer(str(tiny_llama), output_dir=tmp_path, use_dora=True, **ARGS).multi_run(
        identity_rows, num_runs=2, steps_per_run=1, samples_per_run=10, experimental=True)
    assert any("DoRA" in note and "experimental" in note for note in result.report.notes)
    assert "experimental" in result.report.to_text()
