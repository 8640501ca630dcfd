"""Bad input to the export: a coded error, before slow work where possible, and nothing lost or half-written."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backpropagate.errors import BackpropagateError
from backpropagate.export import export_model
from backpropagate.testing import build_tiny_model
from export_helpers import random_adapter

pytest.importorskip("llama_cpp")


def _code(fn, *args, **kwargs) -> BackpropagateError:
    with pytest.raises(BackpropagateError) as info:
        fn(*args, **kwargs)
    return info.value


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_not_a_model_or_adapter_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "file.bin").write_bytes(b"x")
    for source in ("empty", "notes", "file.bin", "missing"):
        err = _code(export_model, tmp_path / source, output=tmp_path / "out")
        assert err.code == "INPUT_NOT_A_MODEL_DIR", source
    assert not (tmp_path / "out").exists()


def test_adapter_whose_base_cannot_be_found(tmp_path: Path) -> None:
    adapter = random_adapter(build_tiny_model("llama"), tmp_path / "adapter")
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for missing in (str(tmp_path / "gone"), "nobody-here/no-such-model"):  # a folder; a hub id (offline)
        config["base_model_name_or_path"] = missing
        config_path.write_text(json.dumps(config), encoding="utf-8")
        err = _code(export_model, adapter, "merged", output=tmp_path / "merged")
        assert err.code == "DEP_BASE_MODEL_NOT_FOUND" and missing in err.message
    assert not (tmp_path / "merged").exists()
    merged = export_model(adapter, "merged", base=build_tiny_model("llama"), output=tmp_path / "merged")
    assert (merged.path / "model.safetensors").is_file()  # --base rescues it


def test_unknown_quantization_fails_first(tmp_path: Path) -> None:
    err = _code(export_model, build_tiny_model("llama"), quantization="q3_xx", output=tmp_path / "o")
    assert err.code == "INPUT_UNKNOWN_QUANTIZATION" and "q4_k_m" in err.message
    assert _code(export_model, build_tiny_model("llama"), "onnx").code == "INPUT_INVALID_VALUE"
    assert not (tmp_path / "o").exists()


def test_unsupported_architecture_names_the_supported_list(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=1024, n_positions=64))
    model.save_pretrained(tmp_path / "gpt2")
    shutil.copy(build_tiny_model("llama") / "tokenizer.json", tmp_path / "gpt2")
    err = _code(export_model, tmp_path / "gpt2", quantization="f16", output=tmp_path / "o")
    assert err.code == "INPUT_UNSUPPORTED_ARCHITECTURE"
    assert "llama, mistral, qwen2, qwen3, phi3, smollm3" in err.message
    assert not list(tmp_path.rglob("*.gguf"))


def test_vocabulary_larger_than_the_embedding(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model = _copy(build_tiny_model("qwen2"), tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(40)])  # 1005 + 40 tokens > 1024 embedding rows
    tokenizer.save_pretrained(model)
    err = _code(export_model, model, quantization="f16", output=tmp_path / "o")
    assert err.code == "STATE_VOCAB_MISMATCH" and "1024" in err.message


def test_sentencepiece_style_tokenizer_is_refused(tmp_path: Path) -> None:
    model = _copy(build_tiny_model("mistral"), tmp_path / "model")
    data = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["byte_fallback"] = True
    (model / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    err = _code(export_model, model, quantization="f16", output=tmp_path / "o")
    assert err.code == "INPUT_UNSUPPORTED_TOKENIZER" and "byte fallback" in err.message


@pytest.mark.parametrize("path", ["/etc/model.gguf", "/usr/lib/backprop/model.gguf", "/proc/model.gguf", "/"])
def test_output_in_a_system_directory(path: str) -> None:
    err = _code(export_model, build_tiny_model("llama"), quantization="f16", output=path)
    assert err.code in ("INPUT_OUTPUT_PATH_FORBIDDEN",)
    assert not Path("/etc/model.gguf").exists() and not Path("/usr/lib/backprop").exists()


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"precious")
    err = _code(export_model, build_tiny_model("llama"), quantization="f16", output=target, verify=False)
    assert err.code == "STATE_OUTPUT_EXISTS" and "--overwrite" in err.hint
    assert target.read_bytes() == b"precious"
    export_model(build_tiny_model("llama"), quantization="f16", output=target, verify=False, overwrite=True)
    assert target.read_bytes()[:4] == b"GGUF"
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    adapter = random_adapter(build_tiny_model("llama"), tmp_path / "adapter")
    assert _code(export_model, adapter, "merged", output=merged_dir).code == "STATE_OUTPUT_EXISTS"


def test_quantized_base_is_never_merged_into(tmp_path: Path) -> None:
    base = _copy(build_tiny_model("llama"), tmp_path / "base-4bit")
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config), encoding="utf-8")
    adapter = random_adapter(build_tiny_model("llama"), tmp_path / "adapter")
    err = _code(export_model, adapter, "merged", base=base, output=tmp_path / "merged")
    assert err.code == "INPUT_BASE_QUANTIZED" and "bitsandbytes" in err.message
    assert not (tmp_path / "merged").exists()


def test_dora_adapter_cannot_become_a_llama_cpp_adapter(tmp_path: Path) -> None:
    adapter = random_adapter(build_tiny_model("llama"), tmp_path / "dora", use_dora=True)
    err = _code(export_model, adapter, "gguf-adapter", output=tmp_path / "o")
    assert err.code == "INPUT_UNSUPPORTED_ADAPTER" and "DoRA" in err.message
    merged = export_model(adapter, "gguf", quantization="f32", output=tmp_path / "m")
    assert merged.report.passed  # merging a DoRA adapter is fine


def test_failed_parity_keeps_the_file_marked(tmp_path: Path) -> None:
    """A GGUF checked against a different model fails; it is kept, renamed, and the report says why."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backpropagate.export.gguf_writer import write_gguf
    from backpropagate.export.parity import verify_gguf
    from backpropagate.export.pipeline import _finish_report

    # Two random tiny models both mostly predict "repeat the last token" (tied embeddings), so they agree.
    # Negating the final norm flips every logit: the same tokenizer and template, opposite predictions.
    base = build_tiny_model("llama", seed=0)
    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.model.norm.weight.neg_()
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(base).save_pretrained(other)
    target = tmp_path / "model-f16.gguf"
    write_gguf(base, target, "f16")
    report = verify_gguf(target, other, "f16")
    assert not report.passed and report.agreement < 0.99
    err = _code(_finish_report, report, target, {})
    marked = tmp_path / "model-f16.parity-failed.gguf"
    assert err.code == "RUNTIME_PARITY_FAILED" and str(marked) in err.message
    assert marked.is_file() and not target.exists()
    saved = json.loads((tmp_path / "export_report.json").read_text(encoding="utf-8"))
    assert saved["passed"] is False and saved["marked_as"] == str(marked) and saved["failures"]


def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null"],
                           capture_output=True, check=False) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(sys.platform != "linux" or not _can_mount_tmpfs(),
                    reason="needs unprivileged user+mount namespaces to mount a small tmpfs")
def test_disk_full_removes_the_partial_file(tmp_path: Path) -> None:
    """A real ENOSPC: the export writes into a 200 KiB tmpfs (private mount namespace) and runs out."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    script = textwrap.dedent(f"""
        import json, os, sys
        from backpropagate.errors import BackpropagateError
        from backpropagate.export import export_model
        try:
            export_model({str(build_tiny_model("llama"))!r}, quantization="f16", output={str(mount)!r}, verify=False)
            print(json.dumps({{"code": None}}))
        except BackpropagateError as exc:
            print(json.dumps({{"code": exc.code, "message": exc.message, "left": sorted(os.listdir({str(mount)!r}))}}))
    """)
    command = f"mount -t tmpfs -o size=200k tmpfs {mount} && exec {shlex.quote(sys.executable)} -c {shlex.quote(script)}"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300,
                          check=False)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["code"] == "STATE_WRITE_FAILED" and "disk full" in outcome["message"]
    assert outcome["left"] == []  # neither the .partial file nor a truncated GGUF remains
