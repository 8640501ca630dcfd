"""Before any training: start-up, ``backprop plan`` and the UI's plan say whether the model can become a GGUF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate.export.preflight import gguf_support
from backpropagate.presets import MODEL_PRESETS


def _gpt2_folder(root: Path) -> Path:
    """A real GPT-2 architecture (which our writer does not hold) with a byte-level tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from backpropagate.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("qwen2")
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=1024, n_positions=128))
    folder = root / "gpt2-tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _backprop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backpropagate.cli", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300)


def test_plan_names_the_export_limitation_before_training(tmp_path: Path) -> None:
    folder = _gpt2_folder(tmp_path)
    result = _backprop("plan", "--model", str(folder))
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("export"))
    assert "GGUF export: NOT possible" in line and "GPT2LMHeadModel" in line, line
    assert "--format merged" in line
    as_json = _backprop("plan", "--model", str(folder), "--json")
    assert "NOT possible" in json.loads(as_json.stdout)["gguf_export"]
    assert not (tmp_path / "gpt2-tiny" / "runs.db").exists()  # nothing was trained or written


def test_a_supported_folder_says_so(tiny_llama: Path) -> None:
    support = gguf_support(str(tiny_llama))
    assert support.supported is True and support.line().startswith("GGUF export: supported")


@pytest.mark.parametrize("preset", [p.key for p in MODEL_PRESETS])
def test_every_model_preset_is_judged_offline(preset: str) -> None:
    support = gguf_support(preset)
    assert support.supported is True, support.line()


def test_an_unknown_hub_id_is_not_guessed() -> None:
    support = gguf_support("someone/not-downloaded-model")
    assert support.supported is None and "not checked" in support.line()


def test_unsupported_tokenizer_is_named(tmp_path: Path) -> None:
    """A WordPiece tokenizer (BERT style) on a llama architecture: the tokenizer is the reason."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3}
    raw = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]")
    folder = tmp_path / "wordpiece"
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    support = gguf_support(str(folder))
    assert support.supported is False and "WordPiece" in support.reason, support.line()
