"""Ollama TEMPLATEs that also render tools, tool calls, tool results and reasoning in a family's own format.

Each mirrors one published chat template (named in its comment) for whole tool conversations: the tool list
(``.Tools``), an assistant's calls (``.ToolCalls``), tool turns (role ``tool``) and, where the family
reasons, ``.Thinking``; without ``.Tools`` it renders plain chats like the plain TEMPLATE of the family.
As with :mod:`.ollama_formats`, none is trusted by itself: :mod:`.ollama_templates` uses one only if it
renders the probe conversations, tool and reasoning ones included, exactly like the chat template.

Shapes Ollama itself reads from a TEMPLATE are kept: ``.Thinking`` is printed inside a block that starts
and ends with the thinking tags (Ollama infers the tags from that block), and the first ``if`` on
``.ToolCalls`` starts with the tool-call prefix (Ollama's tool parser takes it from there); earlier tests
of the calls use a variable (``$calls``) so they do not count as that ``if``. JSON is written by
:mod:`.ollama_json` (Ollama's ``json`` writes no spaces). Turns are assumed without surrounding whitespace,
as the plain TEMPLATEs assume (Jinja's ``trim`` has no Go counterpart).
"""

from __future__ import annotations

from .ollama_formats import TODAY_D_B_Y
from .ollama_json import INDENT4, INLINE, arguments, parameters_schema, tool_schema, value

# Per-turn variables: is this the last turn, the role of the next turn ("" after the last), the calls.
_TURN = ('{{- $last := eq (len (slice $.Messages $i)) 1 }}\n'
         '{{- $next := "" }}{{ if not $last }}{{ $next = (index (slice $.Messages $i) 1).Role }}{{ end }}\n'
         "{{- $calls := .ToolCalls }}\n")
# The index of the last user turn (the turns after it are the current answer, whose reasoning is kept).
_LAST_USER = ('{{- $lastUser := len .Messages }}{{ range $j, $m := .Messages }}'
              '{{ if eq $m.Role "user" }}{{ $lastUser = $j }}{{ end }}{{ end }}\n')
_GEN_AFTER_USER_OR_TOOL = '{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant\n'
_BETWEEN_CALLS = "{{ if ne (len (slice $calls $j)) 1 }}\n{{ end }}"

_QWEN_TOOLS_INTRO = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                     "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
                     "{{- range .Tools }}\n" + tool_schema(".") + "\n{{- end }}\n</tools>\n\n"
                     "For each function call, return a json object with function name and arguments within "
                     "<tool_call></tool_call> XML tags:\n<tool_call>\n"
                     '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n')
_QWEN_CALL = ('{"name": "{{ .Function.Name }}", "arguments": ' + arguments(".Function.Arguments") + "}")
# Qwen2.5-3: tool results join one user turn, each in <tool_response> tags.
_QWEN_TOOL_TURN = ('{{- else if eq .Role "tool" }}\n'
                   '{{- if ne $prev "tool" }}<|im_start|>user{{ end }}\n<tool_response>\n{{ .Content }}\n'
                   '</tool_response>{{ if ne $next "tool" }}<|im_end|>\n{{ end }}\n')
_CHATML_USER = '{{- if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
_END_ASSISTANT = "{{- if not $last }}<|im_end|>\n{{ end }}\n"

#: Qwen2.5-Instruct: the tools follow the system prompt (or Qwen's default one) in the system turn.
QWEN2_5_TOOLS = (
    '{{- $prev := "" }}\n'
    "{{- if .Tools }}<|im_start|>system\n"
    "{{ if .System }}{{ .System }}{{ else }}You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "{{ end }}\n\n" + _QWEN_TOOLS_INTRO +
    "{{ else if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
    "{{ else }}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n" + _TURN + _CHATML_USER +
    '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n'
    "{{- if or .Content (not $calls) }}\n{{ .Content }}{{ end }}\n"
    "{{- if .ToolCalls }}{{ range .ToolCalls }}\n<tool_call>\n" + _QWEN_CALL + "\n</tool_call>{{ end }}{{ end }}\n"
    + _END_ASSISTANT + _QWEN_TOOL_TURN +
    "{{- end }}\n" + _GEN_AFTER_USER_OR_TOOL + "{{ end }}\n"
    "{{- $prev = .Role }}\n{{- end }}")

_THINK_OFF = "{{ if and $.IsThinkSet (not $.Think) }}<think>\n\n</think>\n\n"

#: Qwen3: the system prompt opens the system turn before the tools; the reasoning of the turns after the
#: last user turn is written in <think> tags; think=false writes the empty think block that
#: enable_thinking=False writes.
QWEN3_TOOLS = (
    '{{- $prev := "" }}\n' + _LAST_USER +
    "{{- if .Tools }}<|im_start|>system\n{{ if .System }}{{ .System }}\n\n{{ end }}" + _QWEN_TOOLS_INTRO +
    "{{ else if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n" + _TURN + _CHATML_USER +
    '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n'
    "{{ if and (gt $i $lastUser) (or $last .Thinking) }}<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}"
    "{{ .Content }}\n"
    "{{- if and .Content $calls }}\n{{ end }}\n"
    "{{- if .ToolCalls }}{{ range $j, $c := .ToolCalls }}<tool_call>\n" + _QWEN_CALL + "\n</tool_call>"
    + _BETWEEN_CALLS + "{{ end }}{{ end }}\n" + _END_ASSISTANT + _QWEN_TOOL_TURN +
    "{{- end }}\n" + _GEN_AFTER_USER_OR_TOOL + _THINK_OFF + "{{ end }}{{ end }}\n"
    "{{- $prev = .Role }}\n{{- end }}")

_QWEN3_5_TOOLS_INTRO = (
    "# Tools\n\nYou have access to the following functions:\n\n<tools>\n"
    "{{- range .Tools }}\n" + tool_schema(".") + "\n{{- end }}\n</tools>\n\n"
    "If you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested "
    "within <tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language BEFORE the function call, "
    "but NOT after\n- If there is no function call available, answer the question like normal with your current "
    "knowledge and do not tell the user about function calls\n</IMPORTANT>")
# A parameter value: strings as they are, other values as JSON (Python writes True/None where Go writes true/null).
_QWEN3_5_VALUE = ('{{ if eq (printf "%T" $v) "string" }}{{ $v }}{{ else }}' + value("$v", INLINE, 0)
                  + "{{ end }}")

#: Qwen3.5: the tools open the system turn and the system prompt follows them; calls are XML-like
#: <function=name><parameter=key>value</parameter>; every answer after the last user turn has a think block.
QWEN3_5_TOOLS = (
    '{{- $prev := "" }}\n' + _LAST_USER +
    "{{- if .Tools }}<|im_start|>system\n" + _QWEN3_5_TOOLS_INTRO + "{{ if .System }}\n\n{{ .System }}{{ end }}"
    "<|im_end|>\n{{ else if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n" + _TURN + _CHATML_USER +
    '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n'
    "{{ if gt $i $lastUser }}<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}{{ .Content }}\n"
    "{{- if and .Content $calls }}\n\n{{ end }}\n"
    "{{- if .ToolCalls }}{{ range $j, $c := .ToolCalls }}<tool_call>\n<function={{ .Function.Name }}>\n"
    "{{ range $k, $v := .Function.Arguments }}<parameter={{ $k }}>\n" + _QWEN3_5_VALUE + "\n</parameter>\n{{ end }}"
    "</function>\n</tool_call>" + _BETWEEN_CALLS + "{{ end }}{{ end }}\n" + _END_ASSISTANT +
    '{{- else if eq .Role "tool" }}\n'
    '{{- if and $prev (ne $prev "tool") }}<|im_start|>user{{ end }}\n<tool_response>\n{{ .Content }}\n'
    '</tool_response>{{ if ne $next "tool" }}<|im_end|>\n{{ end }}\n'
    "{{- end }}\n" + _GEN_AFTER_USER_OR_TOOL + _THINK_OFF + "{{ else }}<think>\n{{ end }}{{ end }}\n"
    "{{- $prev = .Role }}\n{{- end }}")

_LLAMA_GEN = "{{- if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n"


def llama3_tools(date: str) -> str:
    """Llama 3.1-3.3 with tools: "Environment: ipython" in the system turn, the tools (json.dumps indent=4)
    in the first user turn, a call as {"name", "parameters"}, results as ipython turns holding a JSON
    string. ``date`` as in :func:`.ollama_formats.llama3_dated`."""
    tools_turn = ("<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with "
                  "a JSON for a function call with its proper arguments that best answers the given prompt.\n\n"
                  'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
                  'value}.Do not use variables.\n\n{{ range $.Tools }}' + tool_schema(".", INDENT4) + "\n\n{{ end }}"
                  "{{ .Content }}<|eot_id|>\n")
    return (
        "<|start_header_id|>system<|end_header_id|>\n\n{{ if .Tools }}Environment: ipython\n{{ end }}"
        f"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n{{{{ .System }}}}<|eot_id|>\n"
        '{{- $first := -1 }}{{ range $j, $m := .Messages }}'
        '{{ if and (lt $first 0) (ne $m.Role "system") }}{{ $first = $j }}{{ end }}{{ end }}\n'
        "{{- range $i, $_ := .Messages }}\n" + _TURN +
        "{{- if and $.Tools (eq $i $first) }}" + tools_turn + _LLAMA_GEN +
        '{{- else if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n'
        + _LLAMA_GEN +
        '{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>\n\n'
        '{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": '
        + arguments(".Function.Arguments") + "}{{ end }}{{ else }}{{ .Content }}{{ end }}\n"
        "{{- if not $last }}<|eot_id|>\n{{- end }}\n"
        '{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>\n\n'
        '{{ printf "%q" .Content }}<|eot_id|>\n' + _LLAMA_GEN +
        "{{- end }}\n{{- end }}")


_HERMES_TYPE = ('{{ if eq (len $p.Type) 1 }}{{ $t := index $p.Type 0 }}{{ if eq $t "string" }}str'
                '{{ else if eq $t "number" }}float{{ else if eq $t "integer" }}int{{ else if eq $t "boolean" }}bool'
                '{{ else if eq $t "array" }}list[Union[]]{{ else if eq $t "object" }}dict{{ else }}Any{{ end }}'
                "{{ else }}Any{{ end }}")
_HERMES_TOOL = (
    '{"type": "function", "function": {"name": "{{ .Function.Name }}", "description": "{{ .Function.Name }}('
    '{{ $s := "" }}{{ range $k, $p := .Function.Parameters.Properties }}{{ $s }}{{ $k }}: ' + _HERMES_TYPE +
    '{{ $s = ", " }}{{ end }}) - {{ .Function.Description }}\n\n'
    "{{ $args := true }}{{ range $k, $p := .Function.Parameters.Properties }}{{ if $args }}    Args:\n"
    "{{ $args = false }}{{ end }}        {{ $k }}(" + _HERMES_TYPE + "): {{ $p.Description }}{{ end }}"
    '", "parameters": {{ if .Function.Parameters.Properties }}' + parameters_schema(".Function.Parameters", INLINE, 0) +
    "{{ else }}{}{{ end }}}")
_HERMES_SYSTEM = (
    "<|im_start|>system\nYou are a function calling AI model. You are provided with function signatures within "
    "<tools></tools> XML tags. You may call one or more functions to assist with the user query. Don't make "
    "assumptions about what values to plug into functions. Here are the available tools: <tools> "
    "{{ range $n, $_ := .Tools }}{{ if $n }}\n{{ end }}" + _HERMES_TOOL + "{{ end }} </tools>"
    'Use the following pydantic model json schema for each tool call you will make: {"properties": {"name": '
    '{"title": "Name", "type": "string"}, "arguments": {"title": "Arguments", "type": "object"}}, "required": '
    '["name", "arguments"], "title": "FunctionCall", "type": "object"}}\nFor each function call return a json '
    "object with function name and arguments within <tool_call></tool_call> XML tags as follows:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-dict>}\n</tool_call><|im_end|>\n')

#: Hermes 3 (NousResearch's tool_use template; its default one is plain ChatML, used when no tools are given):
#: a system turn describing each tool, then the turns in ChatML, system ones in place; results in "tool" turns.
HERMES3_TOOLS = (
    '{{- $prev := "" }}\n{{- if .Tools }}' + _HERMES_SYSTEM + "{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n" + _TURN +
    '{{- if and $.Tools (eq .Role "tool") }}\n'
    '{{- if and $prev (ne $prev "tool") }}<|im_start|>tool\n{{ end }}<tool_response>\n{{ .Content }}\n'
    '</tool_response>{{ if not $last }}\n{{ end }}{{ if ne $next "tool" }}<|im_end|>{{ end }}\n'
    "{{- else if and $.Tools $calls }}<|im_start|>assistant{{ if .ToolCalls }}{{ range .ToolCalls }}\n<tool_call>\n"
    + _QWEN_CALL + "\n</tool_call>{{ end }}{{ end }}<|im_end|>\n"
    "{{ else }}<|im_start|>{{ .Role }}\n{{ .Content }}\n"
    '{{- if or (ne .Role "assistant") (not $last) }}<|im_end|>\n{{ end }}\n'
    "{{- end }}\n" + _GEN_AFTER_USER_OR_TOOL + "{{ end }}\n"
    "{{- $prev = .Role }}\n{{- end }}")

def mistral_tools(space: str = "") -> str:
    """Mistral with tools: the tools go before the last user turn, calls carry their 9-character ids, results
    are [TOOL_RESULTS] with the call id; the system prompt joins the final user turn. ``space``: what follows
    each control token ("" for Nemo's v3-tekken template, " " for Mistral v0.3's published one, whose
    transformers tokenizer adds no "▁" after special tokens), also before each answer."""
    return (
        '{{- $lastUser := -1 }}{{ range $j, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $lastUser = $j }}'
        "{{ end }}{{ end }}\n"
        "{{- range $i, $_ := .Messages }}\n" + _TURN +
        '{{- if eq .Role "user" }}\n'
        f"{{{{- if and $.Tools (eq $i $lastUser) }}}}[AVAILABLE_TOOLS]{space}["
        "{{ range $n, $_ := $.Tools }}{{ if $n }}, {{ end }}"
        '{"type": "function", "function": {"name": "{{ .Function.Name }}"{{ if .Function.Description }}, '
        '"description": "{{ .Function.Description }}"{{ end }}, "parameters": '
        + parameters_schema(".Function.Parameters", INLINE, 0) + "}}{{ end }}][/AVAILABLE_TOOLS]{{ end }}"
        f"[INST]{space}{{{{ if and $.System $last }}}}{{{{ $.System }}}}\n\n{{{{ end }}}}{{{{ .Content }}}}[/INST]\n"
        '{{- else if eq .Role "assistant" }}\n'
        f"{{{{- if .ToolCalls }}}}[TOOL_CALLS]{space}[{{{{ range $n, $_ := .ToolCalls }}}}{{{{ if $n }}}}, {{{{ end }}}}"
        '{"name": {{ printf "%q" .Function.Name }}, "arguments": ' + arguments(".Function.Arguments")
        + ', "id": "{{ .ID }}"}{{ end }}]</s>\n'
        f"{{{{- else }}}}{space}{{{{ .Content }}}}{{{{ if not $last }}}}</s>{{{{ end }}}}{{{{ end }}}}\n"
        f'{{{{- else if eq .Role "tool" }}}}[TOOL_RESULTS]{space}{{"content": {{{{ .Content }}}}, '
        '"call_id": "{{ .ToolCallID }}"}[/TOOL_RESULTS]\n'
        "{{- end }}\n{{- end }}")


#: Candidates for tool conversations, tried in this order (Llama 3.1 pins its date, 3.2+ writes today's).
TOOL_TEMPLATES: dict[str, str] = {
    "qwen2.5-tools": QWEN2_5_TOOLS, "qwen3-tools": QWEN3_TOOLS, "qwen3.5-tools": QWEN3_5_TOOLS,
    "llama3.1-tools": llama3_tools("26 Jul 2024"), "llama3.2-tools": llama3_tools(TODAY_D_B_Y),
    "hermes3-tools": HERMES3_TOOLS, "mistral-nemo-tools": mistral_tools(), "mistral-v0.3-tools": mistral_tools(" "),
}

_MISTRAL_IDS = ("Mistral was trained on 9-character alphanumeric call ids and Ollama names the calls it parses "
                "call_xxxxxxxx, so a client should send ids of its own")
#: What a verified tool TEMPLATE still cannot do in Ollama, for the Modelfile note.
TOOL_CAVEATS: dict[str, tuple[str, ...]] = {
    "qwen3.5-tools": ("Ollama's TEMPLATE-based tool parser reads JSON after the call prefix, so Qwen3.5's "
                      "<function=...> calls in answers reach the client as text",),
    "mistral-nemo-tools": (_MISTRAL_IDS,), "mistral-v0.3-tools": (_MISTRAL_IDS,),
    "llama3.1-tools": ("the Llama 3.1+ format takes one call per assistant turn",),
    "llama3.2-tools": ("the Llama 3.1+ format takes one call per assistant turn",),
}
