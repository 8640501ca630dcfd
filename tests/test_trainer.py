"""The 3-line API on a real tiny model: loss falls, the saved adapter reloads with peft and matches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backpropagate import BackpropagateError, Trainer, TrainingCallback
from backpropagate.demo import quickstart_path


def test_three_lines_train_lowers_loss_and_save_reloads(tiny_llama: Path, tmp_path: Path) -> None:
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path / "out")
    run = trainer.train(str(quickstart_path()), steps=8)
    adapter = trainer.save(tmp_path / "my-model")

    assert run.steps == 8 and len(run.loss_history) == 8
    assert run.final_loss < run.loss_history[0]
    assert run.samples_seen > 0 and run.tokens_trained > 0 and run.dataset_format == "sharegpt"
    assert len(run.run_id) == 32 and Path(run.output_path) == (tmp_path / "out" / "lora").resolve()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 64  # the preset's 256, capped at 64 wide

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    tok = AutoTokenizer.from_pretrained(adapter)
    ids = tok("What is Python?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        trained_logits = trainer.model.eval()(input_ids=ids).logits
        reloaded_logits = reloaded(input_ids=ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)(input_ids=ids).logits
    torch.testing.assert_close(reloaded_logits, trained_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(base_logits, trained_logits, atol=1e-4)  # training changed the model


def test_callbacks_fire_in_order(tiny_llama: Path, tmp_path: Path) -> None:
    events: list[tuple] = []
    cb = TrainingCallback(on_step=lambda s, loss: events.append(("step", s)),
                          on_epoch=lambda e: events.append(("epoch", e)),
                          on_save=lambda p: events.append(("save", p)),
                          on_complete=lambda run: events.append(("complete", run.steps)))
    # 8 short conversations in 64-token rows make a handful of rows; 3 steps x 4 rows wrap the epoch.
    Trainer(str(tiny_llama), lora_r=4, lora_alpha=8, batch_size=2, gradient_accumulation=2,
            max_seq_length=64, output_dir=tmp_path).train(str(quickstart_path()), steps=3, callback=cb)
    kinds = [e[0] for e in events]
    assert [e for e in events if e[0] == "step"] == [("step", 1), ("step", 2), ("step", 3)]
    assert kinds[-2:] == ["save", "complete"] and "epoch" in kinds


def test_env_override_changes_the_trained_rank(tiny_llama: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKPROPAGATE_LORA__R", "8")
    monkeypatch.setenv("BACKPROPAGATE_TRAINING__GRADIENT_ACCUMULATION", "1")
    trainer = Trainer(str(tiny_llama), output_dir=tmp_path)
    trainer.train(str(quickstart_path()), steps=1)
    ranks = {m.r["default"] for m in trainer.model.modules() if hasattr(m, "lora_A") and hasattr(m, "r")}
    assert ranks == {8}


def test_trust_remote_code_is_off_by_default(tiny_llama: Path) -> None:
    assert Trainer(str(tiny_llama)).settings.model.trust_remote_code is False
    assert Trainer().settings.model.name == "Qwen/Qwen2.5-7B-Instruct"


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_steps(tiny_llama: Path, tmp_path: Path, steps: object) -> None:
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), output_dir=tmp_path / "o").train(str(quickstart_path()), steps=steps)
    assert info.value.code == "INPUT_INVALID_VALUE"
    assert not (tmp_path / "o").exists()


def test_output_dir_that_is_a_file(tiny_llama: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), output_dir=blocker).train(str(quickstart_path()), steps=1)
    assert info.value.code == "INPUT_OUTPUT_DIR_INVALID"
    assert blocker.read_text() == "x"


def test_unloadable_models(tmp_path: Path) -> None:
    for name in (str(tmp_path / "missing-model"), "no-such-org/no-such-model-xyz"):
        with pytest.raises(BackpropagateError) as info:
            Trainer(name, output_dir=tmp_path / "o").train(str(quickstart_path()), steps=1)
        assert info.value.code == "DEP_MODEL_LOAD_FAILED"
    assert not (tmp_path / "o").exists()


def test_bad_data_leaves_no_output(tiny_llama: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": [{"from": "human", "value": "hi"}]}\n')
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama), output_dir=tmp_path / "o").train(str(bad), steps=1)
    assert info.value.code == "INPUT_NO_ASSISTANT_TURN"
    assert not (tmp_path / "o").exists()


def test_save_replaces_an_existing_folder_atomically(tiny_llama: Path, tmp_path: Path) -> None:
    trainer = Trainer(str(tiny_llama), lora_r=4, lora_alpha=8, gradient_accumulation=1, output_dir=tmp_path)
    trainer.train(str(quickstart_path()), steps=1)
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    trainer.save(target)
    assert (target / "adapter_model.safetensors").is_file() and not (target / "stale.txt").exists()
    assert not list(tmp_path.glob("adapter.*"))


def test_save_before_train_is_a_coded_error(tiny_llama: Path) -> None:
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(tiny_llama)).save("x")
    assert info.value.code == "STATE_NOT_TRAINED"
