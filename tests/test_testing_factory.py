"""The tiny-model factory: every family loads with the Auto classes, offline and deterministically."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from backpropagate.errors import BackpropagateError
from backpropagate.testing import (
    FAMILIES,
    FAMILY_SPECS,
    VOCAB_SIZE,
    build_tiny_model,
    build_tiny_tokenizer,
    default_cache_dir,
)

MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "mistral": "mistral", "phi3": "phi3",
               "qwen3": "qwen3", "smollm3": "smollm3"}
TIED = {"llama": True, "qwen2": True, "mistral": False, "phi3": False, "qwen3": True, "smollm3": True}
# Strings every render of a system + 2-turn conversation must contain.
MARKERS = {
    "llama": ["<|begin_of_text|>", "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>",
              "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"],
    "qwen2": ["<|im_start|>system\nBe brief.<|im_end|>\n", "<|im_start|>user\nHi there<|im_end|>\n"],
    "qwen3": ["<|im_start|>system\nBe brief.<|im_end|>\n", "<|im_start|>user\nHi there<|im_end|>\n"],
    "mistral": ["<s>[INST] Hi there[/INST]", "[INST] Be brief.\n\nWhat is 2+2?[/INST]"],
    "phi3": ["<|system|>\nBe brief.<|end|>\n", "<|user|>\nHi there<|end|>\n"],
    "smollm3": ["<|im_start|>system\n## Metadata\n\n", "Reasoning Mode: /no_think", "Be brief.",
                "<|im_start|>user\nHi there<|im_end|>\n"],
}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
]
TEXTS = [
    "Hello world! 12345 café naïve Ünïcödé ß 中文 日本語 한국어 🤗🚀👩‍👩‍👧",
    "  leading and trailing spaces  \t\ttabs\r\nwindows\nnewlines\n\n",
    "specials inline: <|im_end|> <think>x</think> [INST] <|eot_id|> <s>",
    "code: def f(x):\n    return x ** 2  # comment\n",
]
WEIGHT_FILES = ("model.safetensors",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def tokenizers(built: dict[str, Path]) -> dict[str, object]:
    return {family: AutoTokenizer.from_pretrained(path) for family, path in built.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_and_runs_forward(built: dict[str, Path], tokenizers: dict, family: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(built[family])
    tok = tokenizers[family]
    cfg = model.config
    assert cfg.model_type == MODEL_TYPES[family]
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (64, 128, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    assert cfg.max_position_embeddings == 2048
    assert model.get_input_embeddings().weight.shape[0] == cfg.vocab_size == VOCAB_SIZE >= len(tok)
    assert cfg.tie_word_embeddings is TIED[family]
    same_storage = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert same_storage is TIED[family]
    assert model.dtype == torch.float32
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    ids = tok("Hello world, how are you?", return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, labels=ids["input_ids"])
    assert out.logits.shape == (1, ids["input_ids"].shape[1], VOCAB_SIZE)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_specials(built: dict[str, Path], tokenizers: dict, family: str) -> None:
    spec, tok = FAMILY_SPECS[family], tokenizers[family]
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        spec.bos, spec.eos, spec.pad, spec.unk)
    decoder = tok.added_tokens_decoder
    for token in spec.leading_specials + spec.trailing_specials + spec.added_tokens:
        ids = tok.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
        assert decoder[ids[0]].special is (token not in spec.added_tokens), token
    assert spec.end_of_turn in tok.get_vocab()
    gen = json.loads((built[family] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids(list(spec.stop_tokens))
    assert tok.convert_tokens_to_ids(spec.end_of_turn) in gen["eos_token_id"]
    # bos comes from the tokenizer.json post-processor (llama, mistral), nowhere else
    first = tok("hi")["input_ids"][0]
    assert (first == tok.bos_token_id) is spec.add_bos
    # the freshly built tokenizer and the reloaded one agree
    fresh = build_tiny_tokenizer(family)
    assert fresh.get_vocab() == tok.get_vocab()
    assert fresh.chat_template == tok.chat_template
    assert all(fresh.encode(t) == tok.encode(t) for t in TEXTS)


@pytest.mark.parametrize("family", FAMILIES)
def test_byte_level_round_trip(tokenizers: dict, family: str) -> None:
    tok = tokenizers[family]
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    # common chat words are single tokens, so sequence lengths look like a real tokenizer's
    assert len(tok.encode(" the assistant", add_special_tokens=False)) == 2
    if FAMILY_SPECS[family].pretokenizer == "qwen":  # NFC, like real Qwen: decomposed input is composed
        assert tok.decode(tok.encode("e\u0301", add_special_tokens=False)) == unicodedata.normalize("NFC", "e\u0301")


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_renders_family_markers(tokenizers: dict, family: str) -> None:
    spec, tok = FAMILY_SPECS[family], tokenizers[family]
    text = tok.apply_chat_template(CONVERSATION, tokenize=False)
    for marker in MARKERS[family]:
        assert marker in text, marker
    for reply in ("Hello! How can I help?", "4"):
        assert reply + spec.end_of_turn in text
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert "Hi there" in prompt and "Hello!" not in prompt
    # tokenize=True must not add a second bos on top of the template's
    ids = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    if tok.bos_token_id is not None:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids.count(tok.convert_tokens_to_ids(spec.end_of_turn)) >= 2
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    tool_chat = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                 {"role": "tool", "content": "18C"}, {"role": "assistant", "content": "It is 18C."}]
    text = tok.apply_chat_template(tool_chat, tokenize=False)
    assert "18C" in text and text.count("It is 18C.") == 1


def test_template_details(tokenizers: dict) -> None:
    user = [{"role": "user", "content": "hi"}]

    def render(family: str, msgs: list[dict], **kw: object) -> str:
        return tokenizers[family].apply_chat_template(msgs, tokenize=False, **kw)

    assert render("llama", user, add_generation_prompt=True).endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n18C<|eot_id|>" in render(
        "llama", [*user, {"role": "tool", "content": "18C"}])
    assert render("qwen2", user).startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n")
    assert "<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>\n" in render(
        "qwen2", [*user, {"role": "assistant", "content": "ok"}, {"role": "tool", "content": "18C"}])
    assert render("qwen3", user) == "<|im_start|>user\nhi<|im_end|>\n"
    two = [*user, {"role": "assistant", "content": "a", "reasoning_content": "r1"},
           {"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]
    assert render("qwen3", two).endswith(
        "<|im_start|>assistant\na<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nb<|im_end|>\n")
    assert render("qwen3", user, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    assert render("qwen3", user, add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert render("mistral", [*user, {"role": "assistant", "content": " yo "}]) == "<s>[INST] hi[/INST] yo</s>"
    with pytest.raises(Exception, match="alternate"):
        render("mistral", [*user, *user])
    assert render("phi3", user, add_generation_prompt=True) == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert render("phi3", user).endswith("<|end|>\n<|endoftext|>")
    smol = render("smollm3", [*user, {"role": "assistant", "content": "yo"}])
    assert "Today Date" not in smol and "<|im_start|>assistant\n<think>\n\n</think>\nyo<|im_end|>\n" in smol
    assert "Reasoning Mode: /think" in render("smollm3", user, enable_thinking=True)
    out = tokenizers["smollm3"].apply_chat_template(
        [*user, {"role": "assistant", "content": "yo"}], return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizers["smollm3"].decode(masked).startswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_is_byte_identical(built: dict[str, Path], tmp_path: Path, family: str) -> None:
    again = build_tiny_model(family, tmp_path / "again")
    for name in WEIGHT_FILES + TOKENIZER_FILES + ("config.json", "generation_config.json"):
        assert (again / name).read_bytes() == (built[family] / name).read_bytes(), name


def test_different_seed_changes_weights_only(built: dict[str, Path], tmp_path: Path) -> None:
    other = build_tiny_model("qwen2", tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (built["qwen2"] / "model.safetensors").read_bytes()
    for name in TOKENIZER_FILES:
        assert (other / name).read_bytes() == (built["qwen2"] / name).read_bytes()


def test_small_size_is_k_quant_friendly(tmp_path: Path) -> None:
    path = build_tiny_model("llama", tmp_path / "small", size="small")
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (256, 512, 4)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 64)
    model = AutoModelForCausalLM.from_pretrained(path)
    for name, param in model.named_parameters():
        if param.ndim == 2:
            assert param.shape[1] % 256 == 0, name
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, VOCAB_SIZE)


def test_weights_are_small_and_global_rng_untouched(tmp_path: Path) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    path = build_tiny_model("mistral", tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)
    weight = AutoModelForCausalLM.from_pretrained(path).model.embed_tokens.weight
    assert 0.015 < weight.std().item() < 0.025


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"family": "gpt2"}, "INPUT_INVALID_VALUE"),
    ({"family": "llama", "size": "huge"}, "INPUT_INVALID_VALUE"),
    ({"family": "llama", "seed": -1}, "INPUT_INVALID_VALUE"),
    ({"family": "llama", "seed": 1.5}, "INPUT_INVALID_VALUE"),
])
def test_invalid_arguments(tmp_path: Path, kwargs: dict, code: str) -> None:
    with pytest.raises(BackpropagateError) as info:
        build_tiny_model(output_dir=tmp_path / "x", **kwargs)
    assert info.value.code == code
    assert not (tmp_path / "x").exists()


def test_output_dir_rules(built: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BackpropagateError) as info:
        build_tiny_model("llama", tmp_path / "file")
    assert info.value.code == "INPUT_OUTPUT_DIR_INVALID"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("x")
    with pytest.raises(BackpropagateError) as info:
        build_tiny_model("llama", tmp_path / "busy")
    assert info.value.code == "STATE_OUTPUT_EXISTS"
    (tmp_path / "empty").mkdir()
    assert build_tiny_model("llama", tmp_path / "empty") == tmp_path / "empty"
    assert build_tiny_model("llama", built["llama"]) == built["llama"]  # the same build is reused
    with pytest.raises(BackpropagateError):
        build_tiny_model("llama", built["llama"], seed=3)


def test_cache_is_reused_and_half_builds_are_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKPROPAGATE_TINY_CACHE", str(tmp_path / "cache"))
    path = build_tiny_model("phi3")
    assert path == default_cache_dir("phi3") == tmp_path / "cache" / "phi3-tiny-0"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model("phi3") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    half = default_cache_dir("qwen3", "tiny", 7)
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # interrupted build: no marker file
    assert build_tiny_model("qwen3", seed=7) == half
    AutoConfig.from_pretrained(half)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["phi3-tiny-0", "qwen3-tiny-7"]
