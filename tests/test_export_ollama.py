"""Ollama: golden Modelfiles per family, TEMPLATE == chat template, registration against a local server that
follows Ollama's documented HTTP API, and a refused connection that keeps every file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from backpropagate.errors import BackpropagateError
from backpropagate.export import gotemplate
from backpropagate.export.gguf_tokenizer import stop_tokens
from backpropagate.export.ollama import build_modelfile, ollama_host
from backpropagate.export.ollama_templates import expected_prompt, render_ollama
from backpropagate.testing import FAMILIES, build_tiny_model
from export_helpers import closed_port, fake_ollama, random_adapter

GOLDEN = Path(__file__).parent / "export_golden"

# Conversations beyond the probes the export itself checks: longer histories, a trailing assistant turn.
EXTRA_CONVERSATIONS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"},
     {"role": "assistant", "content": "Red."}, {"role": "user", "content": "And one more, please."}],
    [{"role": "user", "content": "Write a haiku about the ocean."},
     {"role": "assistant", "content": "Waves fold into foam,\nthe moon pulls the tide back home."},
     {"role": "user", "content": "Now one about mountains.\nKeep it short."}],
]


def _tokenizer(family: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tiny_model(family))


@pytest.mark.parametrize("family", FAMILIES)
def test_modelfile_matches_golden(family: str) -> None:
    model_dir = build_tiny_model(family)
    tokenizer = _tokenizer(family)
    modelfile = build_modelfile(Path("/models/model.gguf"), model_dir,
                                stop_tokens=list(stop_tokens(model_dir, tokenizer)), context_length=2048)
    assert modelfile is not None
    assert modelfile.text() == (GOLDEN / f"{family}.Modelfile").read_text(encoding="utf-8")
    # every end-of-turn token the template writes is a stop parameter
    eot = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "mistral": "</s>", "phi3": "<|end|>",
           "qwen3": "<|im_end|>", "smollm3": "<|im_end|>"}[family]
    assert f'PARAMETER stop "{eot}"' in modelfile.text()


@pytest.mark.parametrize("family", FAMILIES)
def test_template_renders_like_the_chat_template(family: str) -> None:
    tokenizer = _tokenizer(family)
    bos_added = tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    template = build_modelfile(Path("/m.gguf"), build_tiny_model(family), stop_tokens=[],
                               context_length=2048).template
    for messages in EXTRA_CONVERSATIONS:
        assert render_ollama(template, messages) == expected_prompt(tokenizer, messages, bos_added)


def test_gotemplate_follows_go_trim_and_branch_rules() -> None:
    # outputs worked out by hand from Go's text/template rules
    assert gotemplate.render("a  {{- .X -}}  b", {"X": 1}) == "a1b"
    assert gotemplate.render("a \n{{ .X }} \nb", {"X": "x"}) == "a \nx \nb"
    tpl = '{{- range $i, $_ := .M }}{{ if eq . "a" }}A{{ else if eq . "b" }}B{{ else }}?{{ end }}{{ end }}'
    assert gotemplate.render(tpl, {"M": ["a", "b", "c"]}) == "AB?"
    last = "{{- range $i, $_ := .M }}{{ $last := eq (len (slice $.M $i)) 1 }}{{ if $last }}L{{ else }}.{{ end }}{{ end }}"
    assert gotemplate.render(last, {"M": [1, 2, 3]}) == "..L"
    assert gotemplate.render("{{ if and .A (not .B) }}y{{ end }}", {"A": "x", "B": ""}) == "y"
    with pytest.raises(ValueError):
        gotemplate.render("{{ .X | printf }}", {"X": 1})


def test_a_template_with_no_translation_gets_no_modelfile(tmp_path: Path) -> None:
    import shutil

    model_dir = tmp_path / "odd"
    shutil.copytree(build_tiny_model("llama"), model_dir)
    (model_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    with pytest.raises(BackpropagateError) as info:
        build_modelfile(Path("/m.gguf"), model_dir, stop_tokens=[], context_length=2048)
    # the reason names the closest verified template and where the renders part
    assert info.value.code == "INPUT_TEMPLATE_UNTRANSLATABLE" and "closest" in info.value.message, info.value.message


@pytest.mark.parametrize("value,expected", [
    (None, "http://127.0.0.1:11434"), ("0.0.0.0", "http://127.0.0.1:11434"),
    ("localhost:8080", "http://localhost:8080"), ("https://ollama.example:443/", "https://ollama.example:443")])
def test_ollama_host_from_environment(value: str | None, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("OLLAMA_HOST", raising=False)
    else:
        monkeypatch.setenv("OLLAMA_HOST", value)
    assert ollama_host() == expected


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_registration_sends_blobs_then_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backpropagate.export import export_model

    with fake_ollama() as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        result = export_model(build_tiny_model("qwen2"), "gguf", quantization="f16", output=tmp_path / "out",
                              verify=False, ollama=True, ollama_name="tiny-qwen:latest", system="Be brief.")
    gguf = result.path
    digest = _sha(gguf)
    calls = [(r.method, r.path) for r in server.requests]
    assert calls == [("HEAD", f"/api/blobs/{digest}"), ("POST", f"/api/blobs/{digest}"), ("POST", "/api/create")]
    assert server.requests[1].body == gguf.read_bytes()
    create = server.requests[2].json()
    modelfile = result.modelfile.read_text(encoding="utf-8")
    assert create["model"] == "tiny-qwen:latest" and create["stream"] is False
    assert create["files"] == {gguf.name: digest}
    assert f'TEMPLATE """{create["template"]}"""' in modelfile
    assert create["parameters"] == {"stop": ["<|im_end|>", "<|endoftext|>"], "num_ctx": 2048}
    assert create["system"] == "Be brief." and 'SYSTEM """Be brief."""' in modelfile
    assert result.ollama_model == "tiny-qwen:latest" and server.state["models"]["tiny-qwen:latest"]


def test_adapter_registration_uploads_base_and_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backpropagate.export import export_model

    adapter = random_adapter(build_tiny_model("llama"), tmp_path / "adapter")
    with fake_ollama() as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        server.state["blobs"] = {}
        result = export_model(adapter, "gguf-adapter", quantization="f16", output=tmp_path / "out",
                              verify=False, ollama=True, ollama_name="tiny-lora")
    create = server.requests[-1].json()
    assert create["files"] == {result.base_gguf.name: _sha(result.base_gguf)}
    assert create["adapters"] == {result.path.name: _sha(result.path)}
    text = result.modelfile.read_text(encoding="utf-8")
    assert f"FROM {result.base_gguf}" in text and f"ADAPTER {result.path}" in text


def test_refused_connection_keeps_files_and_prints_the_command(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from backpropagate.export import export_model

    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{closed_port()}")
    with pytest.raises(BackpropagateError) as info:
        export_model(build_tiny_model("phi3"), "gguf", quantization="q8_0", output=tmp_path / "out", verify=False,
                     ollama=True, ollama_name="tiny-phi")
    err = info.value
    gguf, modelfile = tmp_path / "out" / "model-q8_0.gguf", tmp_path / "out" / "Modelfile"
    assert err.code == "DEP_OLLAMA_REGISTRATION_FAILED" and err.retryable
    assert f"ollama create tiny-phi -f {modelfile}" in err.message
    assert gguf.is_file() and modelfile.is_file() and f"FROM {gguf}" in modelfile.read_text(encoding="utf-8")


def test_bad_ollama_names_are_refused_before_any_work(tmp_path: Path) -> None:
    from backpropagate.export import export_model

    for name in (None, "bad name", "-x"):
        with pytest.raises(BackpropagateError) as info:
            export_model(build_tiny_model("llama"), "gguf", output=tmp_path / "o", ollama=True, ollama_name=name)
        assert info.value.code == "INPUT_INVALID_VALUE"
    assert not (tmp_path / "o").exists()
