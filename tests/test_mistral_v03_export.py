"""Mistral v0.3 with its tokenizer as transformers 5 writes it (Metaspace "first", no normalizer) exports to GGUF.

transformers 5 loads Mistral-7B-Instruct-v0.3 with ``LlamaTokenizer``, which rebuilds the tokenizer as a
Metaspace pre-tokenizer with ``prepend_scheme "first"``: a "▁" before the text that starts the input, none
after a special token. The published chat template writes a space after every control token ("[INST] ",
"[TOOL_CALLS] [", "[TOOL_RESULTS] {"), so the GGUF gets ``tokenizer.ggml.add_space_prefix = false`` and
llama.cpp tokenizes every rendered chat (tool calls included) like transformers. What still differs, plain text
that starts the input without a space, is named in the parity report and refused where it would matter (a
chat template that starts with text). The tokenizer is the real SentencePiece model from mistral-common.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
llama_cpp = pytest.importorskip("llama_cpp")

from backpropagate.errors import BackpropagateError  # noqa: E402
from backpropagate.export.gguf_tokenizer import check_tokenizer, read_vocab  # noqa: E402
from backpropagate.export.gguf_vocab_kind import tokenizer_kind  # noqa: E402
from backpropagate.export.parity import (  # noqa: E402
    CONVERSATIONS,
    PLAIN_PROMPTS,
    START_PREFIX_NOTE,
    TOOL_CONVERSATION,
    ChatPrompt,
)
from support.assets import AssetUnavailable  # noqa: E402
from support.real_tokenizers import MISTRAL_V03_HF_TEMPLATE, tokenizer_dir, write_vocab_gguf  # noqa: E402

FAMILY = "mistral-v0.3-hf"
ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
        for a in range(1, 4) for b in range(1, 3)]
CHAT = ChatPrompt(CONVERSATIONS[1])  # a system prompt and two user turns


def _folder() -> Path:
    try:
        return tokenizer_dir(FAMILY)
    except AssetUnavailable as exc:
        pytest.skip(f"Mistral's SentencePiece model is not available here: {exc}")


def _tokenizer_json() -> dict[str, Any]:
    return json.loads((_folder() / "tokenizer.json").read_text(encoding="utf-8"))


def _hf_ids(tokenizer: Any, chat: ChatPrompt) -> list[int]:
    tools = list(chat.tools) if chat.tools else None
    ids = tokenizer.apply_chat_template(list(chat.messages), tools=tools, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_the_layout_is_transformers_5s_and_maps_to_no_space_prefix() -> None:
    data = _tokenizer_json()
    assert data["normalizer"] is None and data["model"]["byte_fallback"]
    assert data["pre_tokenizer"] == {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                                     "split": False}
    kind = tokenizer_kind(data)
    assert (kind.model, kind.add_space_prefix, kind.start_prefix_only) == ("llama", False, True)
    assert check_tokenizer(_folder()) is None


def test_template_gives_mistral_commons_ids_for_chat_and_tool_use() -> None:
    """The written template + this tokenizer == mistral_common's v3 encoding, tool calls and results included."""
    pytest.importorskip("mistral_common")
    from mistral_common.protocol.instruct.messages import (
        AssistantMessage,
        SystemMessage,
        ToolMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_folder())
    assert tokenizer.chat_template == MISTRAL_V03_HF_TEMPLATE
    reference = MistralTokenizer.v3()
    kinds = {"user": UserMessage, "assistant": AssistantMessage, "system": SystemMessage}
    chat = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in CHAT.messages])
    assert _hf_ids(tokenizer, CHAT) == reference.encode_chat_completion(chat).tokens
    user, call, result, reply, follow_up = TOOL_CONVERSATION.messages
    function = call["tool_calls"][0]["function"]
    tool_use = ChatCompletionRequest(
        messages=[UserMessage(content=user["content"]),
                  AssistantMessage(tool_calls=[ToolCall(id=call["tool_calls"][0]["id"], function=FunctionCall(
                      name=function["name"], arguments=function["arguments"]))]),
                  ToolMessage(content=result["content"], tool_call_id=result["tool_call_id"]),
                  AssistantMessage(content=reply["content"]), UserMessage(content=follow_up["content"])],
        tools=[Tool(function=Function(**t["function"])) for t in TOOL_CONVERSATION.tools or ()])
    assert _hf_ids(tokenizer, TOOL_CONVERSATION) == reference.encode_chat_completion(tool_use).tokens


def test_llama_cpp_tokenizes_chats_alike_and_plain_text_only_without_the_start_prefix(tmp_path: Path) -> None:
    """The vocab-only GGUF: every rendered chat gives the same ids; plain text differs only before its first word."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_folder())
    info = write_vocab_gguf(_folder(), tmp_path / "vocab.gguf")
    assert (info.model, info.add_space_prefix, info.start_prefix_only, info.add_bos) == ("llama", False, True, True)
    field = gguf.GGUFReader(tmp_path / "vocab.gguf").fields["tokenizer.ggml.add_space_prefix"]
    assert field.contents() is False
    llm = llama_cpp.Llama(str(tmp_path / "vocab.gguf"), vocab_only=True, verbose=False)
    try:
        for chat in [ChatPrompt(c) for c in CONVERSATIONS] + [TOOL_CONVERSATION]:
            text = tokenizer.apply_chat_template(list(chat.messages), tools=list(chat.tools) if chat.tools else None,
                                                 tokenize=False, add_generation_prompt=True)
            assert list(llm.tokenize(text.encode(), add_bos=False, special=True)) == _hf_ids(tokenizer, chat), text
        for text in PLAIN_PROMPTS:
            hf = list(tokenizer(text)["input_ids"])
            got = list(llm.tokenize(text.encode(), add_bos=True, special=False))
            after_special = list(tokenizer("</s>" + text, add_special_tokens=False)["input_ids"])[1:]
            assert got != hf and got == [tokenizer.bos_token_id, *after_special], text
            assert tokenizer.convert_ids_to_tokens(hf[1]).startswith("\u2581"), text
        assert list(llm.tokenize(b" Hello world", add_bos=True, special=False)) == tokenizer(" Hello world")["input_ids"]
    finally:
        llm.close()


def test_mistrals_own_file_is_judged_as_transformers_loads_it(tmp_path: Path) -> None:
    """Mistral's own tokenizer.json (Prepend + Replace) under ``tokenizer_class: LlamaTokenizer``, as the real
    v0.3 folder ships it: transformers 5 runs Metaspace("first") instead, so the GGUF follows that."""
    from transformers import AutoTokenizer

    try:
        source = tokenizer_dir("mistral")
    except AssetUnavailable as exc:
        pytest.skip(str(exc))
    folder = tmp_path / "mistral-own-file"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns(".*"))
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizer"}),
                                                  encoding="utf-8")
    (folder / "chat_template.jinja").write_text(MISTRAL_V03_HF_TEMPLATE, encoding="utf-8")
    assert tokenizer_kind(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))).add_space_prefix
    tokenizer = AutoTokenizer.from_pretrained(folder)
    info = read_vocab(folder, tokenizer, len(tokenizer))
    assert (info.add_space_prefix, info.start_prefix_only) == (False, True) and check_tokenizer(folder) is None


def _variant(tmp_path: Path, name: str, edit: Any = None, template: str | None = MISTRAL_V03_HF_TEMPLATE) -> Path:
    """A copy of the tokenizer folder with ``edit(tokenizer_json)`` applied and ``template`` as chat template."""
    folder = tmp_path / name
    shutil.copytree(_folder(), folder, ignore=shutil.ignore_patterns(".*", "chat_template.jinja"))
    if edit is not None:
        data = _tokenizer_json()
        edit(data)
        (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    if template is not None:
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    if edit is not None:  # LlamaTokenizer would run Metaspace("first") whatever the file says; this runs the file
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "TokenizersBackend"}),
                                                      encoding="utf-8")
    return folder


def _refusal(folder: Path) -> BackpropagateError:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    reason = check_tokenizer(folder)
    with pytest.raises(BackpropagateError) as caught:
        read_vocab(folder, tokenizer, len(tokenizer))
    assert caught.value.code == "INPUT_UNSUPPORTED_TOKENIZER" and reason == caught.value.message
    return caught.value


def test_what_llama_cpp_still_tokenizes_differently_is_refused(tmp_path: Path) -> None:
    plain_start = "{{ messages[0]['content'] }}{{ eos_token }}"  # text, not a special token, starts the input
    error = _refusal(_variant(tmp_path, "text-start", template=plain_start))
    assert "starts a conversation with the text 'Hi</s>'" in error.message and "prepend_scheme 'first'" in error.message
    assert "bos_token" in (error.hint or "")
    error = _refusal(_variant(tmp_path, "no-template", template=None))
    assert "no chat template" in error.message
    reason = check_tokenizer(_tokenizer_json())  # tokenizer.json alone: no template to vouch for the chats
    assert reason and "prepend_scheme 'first'" in reason

    def always(data: dict[str, Any]) -> None:
        data["pre_tokenizer"]["prepend_scheme"] = "always"

    def split(data: dict[str, Any]) -> None:
        data["pre_tokenizer"]["split"] = True

    assert "prepend_scheme 'always'" in _refusal(_variant(tmp_path, "always", always)).message
    assert "split=True" in _refusal(_variant(tmp_path, "split", split)).message
    never = copy.deepcopy(_tokenizer_json())
    never["pre_tokenizer"]["prepend_scheme"] = "never"  # no "▁" anywhere: llama.cpp's add_space_prefix false
    kind = tokenizer_kind(never)
    assert (kind.add_space_prefix, kind.start_prefix_only) == (False, False) and check_tokenizer(never) is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random Mistral with this tokenizer, trained three steps through the public Trainer API."""
    from backpropagate import Trainer
    from support.real_families import build_real_family_model

    try:
        model = build_real_family_model(FAMILY)
    except AssetUnavailable as exc:
        pytest.skip(f"Mistral's SentencePiece model is not available here: {exc}")
    root = tmp_path_factory.mktemp("mistral-v03")
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    trainer = Trainer(str(model), lora_r=4, lora_alpha=8, batch_size=2, gradient_accumulation=1,
                      max_seq_length=128, warmup_ratio=0.0, output_dir=root / "run", seed=0)
    run = trainer.train(str(data), steps=3)
    assert run.steps == 3 and all(loss == loss and loss > 0 for loss in run.loss_history)
    return model, Path(run.output_path)


@pytest.mark.slow
def test_trained_model_exports_f16_that_passes_parity_on_chat_and_tool_use(trained: tuple[Path, Path],
                                                                            tmp_path: Path) -> None:
    from backpropagate.export import export_model
    from backpropagate.export.parity import verify_gguf
    from backpropagate.export.preflight import gguf_support

    model, adapter = trained
    support = gguf_support(str(model))
    assert support.supported is True, support.line()
    result = export_model(adapter, "gguf", quantization="f16", output=tmp_path / "gguf")
    report = result.report
    assert report.passed, report.failures
    plain = [t for t in report.tokenization if not t["chat"]]
    assert all(t.get("start_prefix") for t in plain) and report.known_differences == [START_PREFIX_NOTE]
    assert all(t["match"] for t in report.tokenization if t["chat"]) and all(t["match"] for t in report.chat_template)
    assert report.stop_tokens.get("</s>") is True and report.agreement >= 0.99
    saved = json.loads(result.report_path.read_text(encoding="utf-8"))
    assert saved["passed"] and saved["known_differences"] == [START_PREFIX_NOTE]
    merged = export_model(adapter, "merged", output=tmp_path / "merged").path
    # the default conversations and the tool conversation: 99 % top-1 is judged over all their positions, and
    # a random model's f16 file legitimately flips a few near-ties (top-2 margins < 0.005) in the tool JSON
    both = verify_gguf(result.path, merged, "f16", conversations=[*CONVERSATIONS, TOOL_CONVERSATION])
    assert both.passed, both.failures
    chats = [t for t in both.tokenization if t["chat"]]
    assert len(chats) == len(CONVERSATIONS) + 1 and all(t["match"] for t in chats)
    assert [t["tools"] for t in both.chat_template] == [False] * len(CONVERSATIONS) + [True]
    assert all(t["match"] for t in both.chat_template) and both.known_differences == [START_PREFIX_NOTE]
