"""The Ollama TEMPLATEs (Go templates) written for the chat formats of the supported families.

Each one mirrors one published chat template for conversations of system/user/assistant text turns;
none is trusted by itself: :mod:`.ollama_templates` only uses a TEMPLATE whose render equals the model's
own chat template for every probe conversation. Ollama passes every system turn joined as ``.System`` and
all turns (system ones included) as ``.Messages``. Jinja filters Go cannot express (``trim``, ``split``,
substring tests) are not translated, so the TEMPLATEs assume turns without surrounding whitespace or
reasoning blocks; the names of the older entries appear in the Modelfiles already written and stay.
TEMPLATEs that also render tools, tool calls and reasoning are in :mod:`.ollama_tool_formats`.
"""

from __future__ import annotations

_LAST = "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"

LLAMA3 = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>\n{{- end }}\n"
    "{{- range $i, $_ := .Messages }}\n" + _LAST +
    "{{- if eq .Role \"user\" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
    "{{- if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n"
    "{{- else if eq .Role \"assistant\" }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Content }}\n"
    "{{- if not $last }}<|eot_id|>\n{{- end }}\n"
    "{{- end }}\n{{- end }}")


def _turns(user: str, assistant: str, end: str, gen: str, trim: str = "-") -> str:
    """The per-message loop shared by the ChatML-like formats: ``<user>content<end>`` ..."""
    return (f"{{{{{trim} range $i, $_ := .Messages }}}}\n" + _LAST +
            f"{{{{- if eq .Role \"user\" }}}}{user}{{{{ .Content }}}}{end}{{{{ if $last }}}}{gen}{{{{ end }}}}\n"
            f"{{{{- else if eq .Role \"assistant\" }}}}{assistant}{{{{ .Content }}}}\n"
            f"{{{{- if not $last }}}}{end}{{{{ end }}}}\n"
            "{{- end }}\n{{- end }}")


_CHATML_TURNS = _turns("<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n", "<|im_start|>assistant\n")


def _chatml_system(default: str) -> str:
    """ChatML's system turn from ``.System``, else ``default`` (written only if non-empty)."""
    fallback = f"{{{{ else }}}}<|im_start|>system\n{default}<|im_end|>\n" if default else ""
    return f"{{{{- if .System }}}}<|im_start|>system\n{{{{ .System }}}}<|im_end|>\n{fallback}{{{{ end }}}}\n"


QWEN2 = _chatml_system("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.") + _CHATML_TURNS
CHATML = _chatml_system("") + _CHATML_TURNS
PHI3 = ("{{- if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}\n" +
        _turns("<|user|>\n", "<|assistant|>\n", "<|end|>\n", "<|assistant|>\n"))
_NO_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n"
_SMOL_HEADER = "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: {mode}\n\n"
_SMOL_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face."
SMOLLM3 = (_SMOL_HEADER.format(mode="/no_think") +
           "## Custom Instructions\n\n{{ if .System }}{{ .System }}{{ else }}" + _SMOL_DEFAULT + "{{ end }}"
           "\n\n<|im_end|>\n{{ range $i, $_ := .Messages }}\n" + _LAST +
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

# --- Templates for the families' published chat templates (added after the names above, which keep
# matching the trimmed test templates first).

#: Qwen3.5 opens every generation with "<think>\n" (thinking is on unless enable_thinking=False).
QWEN3_5 = _chatml_system("") + _turns("<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n",
                                     "<|im_start|>assistant\n<think>\n")
#: SmolLM2's ChatML writes its default system prompt (no final period) when none is given.
SMOLLM2 = _chatml_system("You are a helpful AI assistant named SmolLM, trained by Hugging Face") + _CHATML_TURNS
_SMOL_THINK_DEFAULT = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an assistant involves "
    "thoroughly exploring questions through a systematic thinking process before providing the final precise "
    "and accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, "
    "exploration, reassessment, reflection, backtracking, and iteration to develop well-considered thinking "
    "process. Please structure your response into two main sections: Thought and Solution using the specified "
    "format: <think> Thought section </think> Solution section. In the Thought section, detail your reasoning "
    "process in steps. Each step should include detailed considerations such as analysing questions, "
    "summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current steps, "
    "refining any errors, and revisiting previous steps. In the Solution section, based on various attempts, "
    "explorations, and reflections from the Thought section, systematically present the final solution that you "
    "deem correct. The Solution section should be logical, accurate, and concise and detail necessary steps "
    "needed to reach the conclusion.")
#: SmolLM3's published template defaults to /think: a long default system prompt, no empty think blocks.
SMOLLM3_THINK = (_SMOL_HEADER.format(mode="/think") + "## Custom Instructions\n\n{{ if .System }}{{ .System }}"
                 "{{ else }}" + _SMOL_THINK_DEFAULT + "{{ end }}\n\n<|im_end|>\n" +
                 _turns("<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n", "<|im_start|>assistant\n",
                        trim=""))

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: strftime("%d %b %Y") of today, built from Ollama's ``currentDate`` (Ollama 0.11+; it only writes YYYY-MM-DD),
#: so Ollama writes the date of each request, as transformers' strftime_now does for training and inference.
TODAY_D_B_Y = ("{{ $d := currentDate }}{{ $m := slice $d 5 7 }}{{ slice $d 8 10 }} "
               + "".join(f"{{{{ {'if' if n == 1 else 'else if'} eq $m \"{n:02d}\" }}}}{m}"
                         for n, m in enumerate(_MONTHS, 1))
               + "{{ end }} {{ slice $d 0 4 }}")


def llama3_dated(date: str) -> str:
    """Llama 3.1+: a system turn with the knowledge cutoff and ``date`` (literal text or :data:`TODAY_D_B_Y`)
    always opens the prompt, and the system prompt goes inside it."""
    return ("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            f"Today Date: {date}\n\n{{{{ .System }}}}<|eot_id|>\n" + LLAMA3[LLAMA3.index("{{- range"):])


#: Llama 3.1 pins "26 Jul 2024"; Llama 3.2/3.3 write today's date when strftime_now exists (transformers).
LLAMA3_1 = llama3_dated("26 Jul 2024")
LLAMA3_2 = llama3_dated(TODAY_D_B_Y)

#: Gemma 3: "model" turns, the system text opens the first user turn (which follows the system turn).
GEMMA3 = (
    "{{- range $i, $_ := .Messages }}\n" + _LAST +
    "{{- if eq .Role \"user\" }}<start_of_turn>user\n{{ if and $.System (eq $i 1) }}{{ $.System }}\n\n{{ end }}"
    "{{ .Content }}<end_of_turn>\n{{ if $last }}<start_of_turn>model\n{{ end }}\n"
    "{{- else if eq .Role \"assistant\" }}<start_of_turn>model\n{{ .Content }}\n"
    "{{- if not $last }}<end_of_turn>\n{{ end }}\n"
    "{{- end }}\n{{- end }}")

#: Mistral v3 as mistral_common writes it (no space after "[INST]": the tokenizer adds one) and Mistral Nemo's
#: (v3-tekken) template: the system prompt joins the last user turn.
MISTRAL_V3 = (
    "{{- range $i, $_ := .Messages }}\n"
    "{{- if eq .Role \"user\" }}[INST]{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}\n\n"
    "{{ end }}{{ .Content }}[/INST]\n"
    "{{- else if eq .Role \"assistant\" }}{{ .Content }}\n"
    "{{- if ne (len (slice $.Messages $i)) 1 }}</s>\n{{- end }}\n"
    "{{- end }}\n{{- end }}")

#: Candidate templates, tried in this order (the first one that reproduces every probe is used).
TEMPLATES: dict[str, str] = {
    "llama3": LLAMA3, "qwen2": QWEN2, "chatml": CHATML, "phi3": PHI3, "smollm3": SMOLLM3, "mistral": MISTRAL,
    "llama3.1": LLAMA3_1, "llama3.2": LLAMA3_2, "qwen3.5": QWEN3_5, "smollm2": SMOLLM2,
    "smollm3-think": SMOLLM3_THINK, "gemma3": GEMMA3, "mistral-v3": MISTRAL_V3,
}
