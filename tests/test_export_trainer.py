"""``Trainer.export`` / ``Trainer.push``, the Hub push against a local Hub endpoint, and the CLI commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backpropagate import BackpropagateError, Trainer
from backpropagate.demo import quickstart_path
from backpropagate.export import push_folder
from backpropagate.testing import build_tiny_model
from export_helpers import fake_hub

pytest.importorskip("llama_cpp")
TOKEN = "hf_" + "Q" * 34  # a fake token: it must reach the server and never the output
BACKPROP = str(Path(sys.executable).with_name("backprop"))


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    trainer = Trainer(str(build_tiny_model("llama")), lora_r=8, lora_alpha=16, lora_dropout=0.0,
                      learning_rate=1e-2, batch_size=2, gradient_accumulation=1, max_seq_length=128,
                      output_dir=tmp_path_factory.mktemp("trainer-export"), seed=0)
    trainer.train(str(quickstart_path()), steps=6)
    return trainer


def test_export_gguf_with_defaults(trainer: Trainer, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    result = trainer.export("gguf", quantization="q8_0")
    assert result.path == trainer.output_dir / "gguf" / "model-q8_0.gguf" and result.report.passed
    logged = capsys.readouterr().err
    assert "export_done" in logged and "parity: passed" in logged  # Python users see the verdict too
    shown = repr(result)  # what a notebook shows: the CLI's summary, not the nested report
    assert shown.startswith("ExportResult (gguf, parity: passed)") and f"gguf: {result.path}" in shown
    assert len(shown) < 4000 and "logits" not in shown.split("\n")[0]
    run = repr(trainer.last_run)
    assert run.startswith("TrainingRun\nrun_id: ") and "final loss: " in run and "config" not in run
    assert result.modelfile == trainer.output_dir / "gguf" / "Modelfile"
    record = json.loads((trainer.output_dir / "gguf" / "training_run.json").read_text(encoding="utf-8"))
    assert record["run_id"] == trainer.last_run.run_id and record["final_loss"] == trainer.last_run.final_loss


def test_merge_uses_full_precision_base_not_in_memory_weights(trainer: Trainer) -> None:
    """Even if the in-memory base were quantized (here: rounded to a 16-level grid, like 4-bit), the merge
    reloads the base from disk in full precision and adds the adapter's delta to that."""
    from safetensors.torch import load_file

    layer = trainer.model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        weight = layer.base_layer.weight
        step = weight.abs().max() / 7
        weight.copy_(torch.round(weight / step) * step)
    result = trainer.export("merged")
    merged = load_file(result.path / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    base = load_file(build_tiny_model("llama") / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    adapter = load_file(trainer.output_dir / "lora" / "adapter_model.safetensors")
    a = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    torch.testing.assert_close(merged, base + (16 / 8) * b @ a, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(merged, weight.detach() + (16 / 8) * b @ a, atol=1e-4)
    assert {"config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in result.path.iterdir()}


def test_export_adapter_copy_refuses_to_overwrite(trainer: Trainer, tmp_path: Path) -> None:
    result = trainer.export("adapter", output=tmp_path / "adapter-copy")
    assert (result.path / "adapter_model.safetensors").is_file()
    assert json.loads((result.path / "training_run.json").read_text())["run_id"] == trainer.last_run.run_id
    with pytest.raises(BackpropagateError) as info:
        trainer.export("adapter", output=tmp_path / "adapter-copy")
    assert info.value.code == "STATE_OUTPUT_EXISTS"


def test_export_before_training_is_refused() -> None:
    with pytest.raises(BackpropagateError) as info:
        Trainer(str(build_tiny_model("llama"))).export("gguf")
    assert info.value.code == "STATE_NOT_TRAINED"


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs with HF_HUB_OFFLINE=1; a push to the local fake Hub needs the client online.
    huggingface_hub reads that variable once, at import, into ``constants.HF_HUB_OFFLINE``."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_push_in_offline_mode_is_a_coded_error(trainer: Trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackpropagateError) as info:
        trainer.push("me/tiny", token=TOKEN)
    assert info.value.code == "HUB_PUSH_FAILED" and "HF_HUB_OFFLINE" in info.value.hint


@pytest.mark.usefixtures("online")
def test_push_uploads_one_commit_with_a_model_card(trainer: Trainer, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with fake_hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = trainer.push("me/tiny-llama", private=True)
    assert hub.state["repo"] == {"name": "tiny-llama", "organization": "me", "visibility": "private",
                                 "type": "model"}
    commits = [r for r in hub.requests if "/commit/" in r.path]
    assert len(commits) == 1 and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)
    files = hub.state["commit"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    card = files["README.md"].decode()
    run = trainer.last_run
    assert run.run_id in card and f"{run.final_loss:.4f}" in card and "library_name: peft" in card
    assert str(build_tiny_model("llama")) in card and "dataset hash" in card
    assert result.private and result.repo_id == "me/tiny-llama"
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err


@pytest.mark.usefixtures("online")
def test_push_gguf_folder_card_carries_parity(trainer: Trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = trainer.output_dir / "gguf"
    if not (folder / "export_report.json").is_file():
        trainer.export("gguf", quantization="q8_0")
    with fake_hub() as hub:
        push_folder(folder, "me/tiny-gguf", token=TOKEN, endpoint=hub.url)
    card = hub.state["commit"]["README.md"].decode()
    assert "GGUF parity | q8_0: top-1 agreement" in card and "passed" in card and "tags:\n- backpropagate\n- gguf" in card
    assert "model-q8_0.gguf" in hub.state["commit"] and "Modelfile" in hub.state["commit"]


@pytest.mark.usefixtures("online")
def test_push_without_or_with_a_rejected_token(trainer: Trainer, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cached login either
    with pytest.raises(BackpropagateError) as info:
        trainer.push("me/tiny")
    assert info.value.code == "HUB_PUSH_AUTH_REQUIRED" and "hf auth login" in info.value.hint
    with fake_hub() as hub:
        hub.state["deny"] = True
        with pytest.raises(BackpropagateError) as info:
            push_folder(trainer.output_dir / "lora", "me/tiny", token=TOKEN, endpoint=hub.url)
    assert info.value.code == "HUB_PUSH_AUTH_REQUIRED" and TOKEN not in str(info.value)
    with pytest.raises(BackpropagateError) as info:
        push_folder(trainer.output_dir / "lora", "not a repo id!", token=TOKEN)
    assert info.value.code == "INPUT_INVALID_VALUE"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BACKPROP, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_cli_export_and_errors(tmp_path: Path) -> None:
    done = _cli("export", str(build_tiny_model("qwen3")), "--quantization", "q8_0", "--output", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert "parity: PASSED (q8_0)" in done.stdout and "top-1 agreement" in done.stdout
    assert f"gguf: {tmp_path / 'o' / 'model-q8_0.gguf'}" in done.stdout and "modelfile:" in done.stdout
    done = _cli("export", str(tmp_path / "nothing"))
    assert done.returncode == 1 and done.stderr.startswith("[INPUT_NOT_A_MODEL_DIR]:")
    assert "Traceback" not in done.stderr and "hint:" in done.stderr
    done = _cli("push", str(tmp_path / "o"), "--repo", "me/x",
                env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home")})
    assert done.returncode == 1 and done.stderr.startswith("[HUB_PUSH_AUTH_REQUIRED]:")
    assert "hf auth login" in done.stderr
