"""Ollama TEMPLATEs (Go templates) for the chat formats of the supported families, and how one is chosen.

Ollama passes the system prompt as ``.System`` and the turns as ``.Messages`` (each with ``.Role`` and
``.Content``); system turns are rendered from ``.System`` only, and the generation prompt follows the last
user turn. A template is only used for a model if, rendered by :mod:`.gotemplate` for a set of probe
conversations, it gives exactly the text of the model's own chat template (after the bos token that
llama.cpp adds by itself). Tool calls and reasoning toggles are not translated.
"""

from __future__ import annotations

from typing import Any

from .gotemplate import render

_LAST = "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"

LLAMA3 = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>\n{{- end }}\n"
    "{{- range $i, $_ := .Messages }}\n" + _LAST +
    "{{- if eq .Role \"user\" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
    "{{- if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n"
    "{{- else if eq .Role \"assistant\" }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Content }}\n"
    "{{- if not $last }}<|eot_id|>\n{{- end }}\n"
    "{{- end }}\n{{- end }}")


def _turns(user: str, assistant: str, end: str, gen: str) -> str:
    """The per-message loop shared by the ChatML-like formats: ``<user>content<end>`` ..."""
    return ("{{- range $i, $_ := .Messages }}\n" + _LAST +
            f"{{{{- if eq .Role \"user\" }}}}{user}{{{{ .Content }}}}{end}{{{{ if $last }}}}{gen}{{{{ end }}}}\n"
            f"{{{{- else if eq .Role \"assistant\" }}}}{assistant}{{{{ .Content }}}}\n"
            f"{{{{- if not $last }}}}{end}{{{{ end }}}}\n"
            "{{- end }}\n{{- end }}")


_CHATML_TURNS = _turns("<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n", "<|im_start|>assistant\n")
QWEN2 = ("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
         "{{ else }}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
         "<|im_end|>\n{{ end }}\n" + _CHATML_TURNS)
CHATML = "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\n" + _CHATML_TURNS
PHI3 = ("{{- if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}\n" +
        _turns("<|user|>\n", "<|assistant|>\n", "<|end|>\n", "<|assistant|>\n"))
_NO_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n"
SMOLLM3 = ("<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /no_think\n\n"
           "## Custom Instructions\n\n{{ if .System }}{{ .System }}{{ else }}You are a helpful AI assistant "
           "named SmolLM, trained by Hugging Face.{{ end }}\n\n<|im_end|>\n{{ range $i, $_ := .Messages }}\n"
           + _LAST +
           f"{{{{- if eq .Role \"user\" }}}}<|im_start|>user\n{{{{ .Content }}}}<|im_end|>\n"
           f"{{{{ if $last }}}}{_NO_THINK}{{{{ end }}}}\n"
           f"{{{{- else if eq .Role \"assistant\" }}}}{_NO_THINK}{{{{ .Content }}}}\n"
           "{{- if not $last }}<|im_end|>\n{{ end }}\n{{- end }}\n{{- end }}")
MISTRAL = (
    "{{- range $i, $_ := .Messages }}\n"
    "{{- if eq .Role \"user\" }}[INST] {{ if and $.System (le (len (slice $.Messages $i)) 2) }}{{ $.System }}\n\n"
    "{{ end }}{{ .Content }}[/INST]\n"
    "{{- else if eq .Role \"assistant\" }} {{ .Content }}\n"
    "{{- if ne (len (slice $.Messages $i)) 1 }}</s>\n{{- end }}\n"
    "{{- end }}\n{{- end }}")

#: Candidate templates, tried in this order.
TEMPLATES: dict[str, str] = {"llama3": LLAMA3, "qwen2": QWEN2, "chatml": CHATML, "phi3": PHI3,
                             "smollm3": SMOLLM3, "mistral": MISTRAL}

PROBES: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "What is the capital of France?"},),
    ({"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello!"}),
    ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}),
    ({"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": "6"}, {"role": "user", "content": "Thanks."}),
)


def render_ollama(template: str, messages: list[dict[str, str]]) -> str:
    """The prompt Ollama builds for ``messages`` (system turns become ``.System``, joined like Ollama does)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return render(template, {"System": system, "Messages": turns})


def expected_prompt(tokenizer: Any, messages: list[dict[str, str]], bos_added: bool) -> str:
    """What the model's chat template renders, minus the bos that llama.cpp's tokenizer adds itself."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token or ""
    if bos_added and bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def pick_template(tokenizer: Any, bos_added: bool) -> tuple[str, str] | None:
    """(name, Go template) whose renders equal the chat template's for every probe, or None."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        expected = [expected_prompt(tokenizer, list(p), bos_added) for p in PROBES]
    except Exception:  # noqa: BLE001 - a template that refuses the probes cannot be verified
        return None
    for name, template in TEMPLATES.items():
        if all(render_ollama(template, list(p)) == e for p, e in zip(PROBES, expected, strict=True)):
            return name, template
    return None
