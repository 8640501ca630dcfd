"""Which Ollama TEMPLATE (Go template) a model gets, verified by rendering.

Ollama passes the system prompt as ``.System`` and the turns as ``.Messages`` (:mod:`.ollama_data` says
what else: tool calls, tool results, reasoning, ``.Tools``); the generation prompt follows the last user
or tool turn. A TEMPLATE is only used for a model if, rendered by :mod:`.gotemplate` for every probe
conversation, it gives exactly the text of the model's own chat template (after the bos token that
llama.cpp adds by itself); the chat template is rendered the way training renders it (no extra arguments,
so a template that writes today's date writes the real one). When none does, :func:`choose_template` says
what differs, so the note is specific.

Tools and reasoning are verified the same way. When the chat template writes tools (a tool conversation's
render names the tool), the TEMPLATEs of :mod:`.ollama_tool_formats` are tried on the tool conversations
as well (tool list, call, result, answer, and a final user turn or a final result); when it writes
reasoning (``reasoning_content``), on reasoning conversations too, with Ollama's ``think`` off where the
chat template has ``enable_thinking``. A TEMPLATE that reproduces them all is used and the choice says
so; otherwise the plain TEMPLATE is used, which never mentions ``.Tools`` (Ollama then refuses tool
requests for the model) nor ``.Thinking``, and the note says what the closest tool TEMPLATE got wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .gotemplate import render
from .ollama_data import template_data
from .ollama_formats import TEMPLATES
from .ollama_shapes import thinking_tags, tool_call_prefix
from .ollama_tool_formats import TOOL_CAVEATS, TOOL_TEMPLATES

PROBES: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "What is the capital of France?"},),
    ({"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello!"}),
    ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}),
    ({"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": "6"}, {"role": "user", "content": "Thanks."}),
    ({"role": "user", "content": "Write a haiku about the ocean."},
     {"role": "assistant", "content": "Waves fold into foam,\nthe moon pulls the tide back home."},
     {"role": "user", "content": "Now one about mountains.\nKeep it short."}),
)

#: The probe tool, in the key order of transformers' get_json_schema, properties in sorted order (as Ollama
#: gives them to templates).
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city name."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit."}},
        "required": ["city"]}}}


def tool_call(city: str, call_id: str = "abcDEF123", **more: Any) -> dict[str, Any]:
    """An HF-form tool call of the probe tool (Mistral wants 9-character alphanumeric ids)."""
    return {"type": "function", "id": call_id, "function": {"name": "get_weather", "arguments": {"city": city, **more}}}


def tool_result(content: str, call_id: str = "abcDEF123") -> dict[str, Any]:
    return {"role": "tool", "content": content, "tool_call_id": call_id, "name": "get_weather"}


@dataclass(frozen=True)
class Probe:
    """A conversation rendered both ways: ``tools`` given to both, ``think`` as Ollama's think option and
    the chat template's enable_thinking (None: not given)."""

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] = ()
    think: bool | None = None

    def roles(self) -> str:
        return "/".join(m["role"] for m in self.messages) + (" with tools" if self.tools else "")


_ASK = {"role": "user", "content": "What is the weather in Paris?"}
_CALL = {"role": "assistant", "content": "", "tool_calls": [tool_call("Paris")]}
_ANSWER = {"role": "assistant", "content": "It is sunny and 22 C in Paris."}
TOOL_PROBES: tuple[Probe, ...] = (
    Probe(({"role": "system", "content": "You are a helpful assistant."}, _ASK, _CALL, tool_result("sunny, 22 C"),
           _ANSWER, {"role": "user", "content": "Thanks!"}), (WEATHER_TOOL,)),
    Probe((_ASK, _CALL, tool_result("sunny, 22 C")), (WEATHER_TOOL,)),
    Probe((_ASK, {"role": "assistant", "content": "Let me check both.",
                  "tool_calls": [tool_call("Paris", unit="celsius"), tool_call("Lyon", "xyzXYZ789")]},
           tool_result("sunny, 22 C"), tool_result("rain, 15 C", "xyzXYZ789")), (WEATHER_TOOL,)),
)
_REASONED_CALL = {**_CALL, "reasoning_content": "The user wants the weather, so I call get_weather."}
THINKING_PROBES: tuple[Probe, ...] = (
    Probe((_ASK, _REASONED_CALL, tool_result("sunny, 22 C")), (WEATHER_TOOL,)),
    Probe(({"role": "user", "content": "2+2?"},
           {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."},
           {"role": "user", "content": "And 3+3?"})),
    Probe(({"role": "user", "content": "2+2?"},), think=False),
)

_CONTEXT = 40  # characters of each render quoted around the first difference


@dataclass(frozen=True)
class TemplateChoice:
    """The verified TEMPLATE (``name``/``template``), or None and ``reason``: why none reproduces the chat
    template. ``tools``/``thinking``: the TEMPLATE was verified on tool / reasoning conversations (Ollama
    offers tool calls / thinking for it); ``notes`` says why not where the chat template has them."""

    name: str | None
    template: str | None
    reason: str = ""
    tools: bool = False
    thinking: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def note(self) -> str:
        """One line for the Modelfile: what was verified beyond plain chats, and what was not."""
        done = " and ".join(what for what, ok in (("tool calls", self.tools), ("reasoning", self.thinking)) if ok)
        head = f"{done} are written in the model's own format, verified like plain chats" if done else ""
        text = "; ".join(part for part in (head, *self.notes) if part)
        return text[:1].upper() + text[1:] + ("." if text and not text.endswith(".") else "")


def render_ollama(template: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                  think: bool | None = None) -> str:
    """The prompt Ollama builds for ``messages`` (HF form) and ``tools`` with this TEMPLATE: system turns
    joined into ``.System``, same-role runs merged, thinking on unless ``think`` is False when the TEMPLATE
    writes ``.Thinking`` (as Ollama does for a model that can think)."""
    return render(template, template_data(messages, tools, think, thinking_capable=".Thinking" in template))


def expected_prompt(tokenizer: Any, messages: list[dict[str, Any]], bos_added: bool,
                    tools: list[dict[str, Any]] | None = None, think: bool | None = None) -> str:
    """What the model's chat template renders, minus the bos that llama.cpp's tokenizer adds itself."""
    extra: dict[str, Any] = {} if think is None else {"enable_thinking": think}
    text = tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=True,
                                         **extra)
    bos = tokenizer.bos_token or ""
    if bos_added and bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def _roles(probe: tuple[dict[str, Any], ...] | Probe) -> str:
    return probe.roles() if isinstance(probe, Probe) else "/".join(m["role"] for m in probe)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _feature(want: str) -> str:
    """A feature of the chat template's text (near a difference) that no TEMPLATE variable reproduces."""
    if "<think>" in want or "</think>" in want:
        return "; it writes reasoning (<think>) blocks in a way no TEMPLATE here reproduces"
    if "Date:" in want:
        return "; it writes a date in a form no TEMPLATE here reproduces"
    return ""


def _difference(name: str, probe: tuple[dict[str, Any], ...] | Probe, got: str, want: str, matched: int,
                total: int) -> str:
    at = _common_prefix(got, want)
    start = max(0, at - _CONTEXT // 2)
    return (f"the closest Ollama TEMPLATE ({name!r}, {matched}/{total} probes equal) differs on the "
            f"{_roles(probe)} conversation at character {at}: it writes {got[start:at + _CONTEXT]!r} where the "
            f"chat template writes {want[start:at + _CONTEXT]!r}{_feature(want[start:at + _CONTEXT])}")


def _as_probe(probe: tuple[dict[str, Any], ...] | Probe) -> Probe:
    return probe if isinstance(probe, Probe) else Probe(probe)


def _render_or_error(template: str, probe: tuple[dict[str, Any], ...] | Probe) -> str:
    p = _as_probe(probe)
    try:
        return render_ollama(template, list(p.messages), list(p.tools) or None, p.think)
    except (ValueError, TypeError, IndexError) as exc:  # a TEMPLATE our renderer cannot run counts as a miss
        return f"<render error: {exc}>"


def _expected_or_none(tokenizer: Any, probe: Probe, bos_added: bool) -> str | None:
    """The chat template's render, or None where it refuses the conversation (e.g. two calls in one turn)."""
    try:
        return expected_prompt(tokenizer, list(probe.messages), bos_added, list(probe.tools) or None, probe.think)
    except Exception:  # noqa: BLE001 - jinja raises what the template raises
        return None


Checks = list[tuple[Probe, str]]  # each probe with the chat template's render of it


def _closest(candidates: dict[str, str], checks: Checks) -> tuple[str | None, str]:
    """The first candidate whose renders equal every check's, else (None, what the closest one gets wrong)."""
    best: tuple[int, int, str] | None = None  # (probes equal, common prefix of the first miss, reason)
    for name, template in candidates.items():
        renders = [_render_or_error(template, probe) for probe, _ in checks]
        misses = [i for i, (got, (_, want)) in enumerate(zip(renders, checks, strict=True)) if got != want]
        if not misses:
            return name, ""
        i = misses[0]
        score = (len(checks) - len(misses), _common_prefix(renders[i], checks[i][1]))
        if best is None or score > best[:2]:
            best = (*score, _difference(name, checks[i][0], renders[i], checks[i][1], score[0], len(checks)))
    return None, best[2] if best else "no candidate TEMPLATE"


def _applicable(tokenizer: Any, probes: tuple[Probe, ...], bos_added: bool) -> Checks:
    """The probes the chat template renders, with its renders (a refused conversation is not checked)."""
    checks = [(p, _expected_or_none(tokenizer, p, bos_added)) for p in probes]
    return [(p, text) for p, text in checks if text is not None]


def _writes_tools(checks: Checks) -> bool:
    description = WEATHER_TOOL["function"]["description"]
    return any(description in text for _, text in checks)


def _writes_reasoning(tokenizer: Any, checks: Checks, bos_added: bool) -> bool:
    """Does the chat template write ``reasoning_content``, or answer ``enable_thinking=False`` differently?"""
    if any(m.get("reasoning_content") and m["reasoning_content"] in text for p, text in checks for m in p.messages):
        return True
    for probe, text in checks:
        if probe.think is not None and _expected_or_none(tokenizer, Probe(probe.messages), bos_added) != text:
            return True
    return False


def _extended(tokenizer: Any, bos_added: bool, plain: Checks) -> tuple[bool, bool, str | None, str]:
    """Does the chat template write tools / reasoning, and the first tool TEMPLATE reproducing everything it
    writes (or None and what the closest one gets wrong). A TEMPLATE using .Tools is only eligible when the
    tool conversations were compared; the reasoning probes are compared in any case, so a TEMPLATE writing
    .Thinking cannot pass for a chat template that writes no reasoning."""
    tool_checks = _applicable(tokenizer, TOOL_PROBES, bos_added)
    think_checks = _applicable(tokenizer, THINKING_PROBES, bos_added)
    tools = _writes_tools(tool_checks)
    thinking = _writes_reasoning(tokenizer, think_checks, bos_added)
    if not (tools or thinking):
        return False, False, None, ""
    if not tools:
        tool_checks, think_checks = [], [(p, t) for p, t in think_checks if not p.tools]
    candidates = {n: t for n, t in TOOL_TEMPLATES.items() if tools or ".Tools" not in t}
    if not candidates:
        return tools, thinking, None, "the TEMPLATEs here that write reasoning all write tools too"
    name, reason = _closest(candidates, plain + tool_checks + think_checks)
    return tools, thinking, name, reason


def choose_template(tokenizer: Any, bos_added: bool) -> TemplateChoice:
    """The TEMPLATE whose renders equal the chat template's for every probe, tool and reasoning ones
    included where the chat template has them, else the plain one (notes say why), else why there is none."""
    if not getattr(tokenizer, "chat_template", None):
        return TemplateChoice(None, None, "the tokenizer has no chat template")
    plain: Checks = []
    for messages in PROBES:
        try:
            plain.append((Probe(messages), expected_prompt(tokenizer, list(messages), bos_added)))
        except Exception as exc:  # noqa: BLE001 - a template that refuses a probe cannot be verified
            return TemplateChoice(None, None, f"the chat template refuses a {_roles(messages)} conversation "
                                              f"({type(exc).__name__}: {exc}), so no TEMPLATE can be verified")
    tools, thinking, name, extended = _extended(tokenizer, bos_added, plain)
    if name is not None:
        template = TOOL_TEMPLATES[name]
        # Ollama offers tools when the TEMPLATE names .Tools (and parses calls after the prefix it finds),
        # thinking when it finds the tags around .Thinking
        return TemplateChoice(name, template, tools=tools and ".Tools" in template and tool_call_prefix(template)
                              is not None, thinking=thinking and all(thinking_tags(template)),
                              notes=TOOL_CAVEATS.get(name, ()))
    name, reason = _closest(TEMPLATES, plain)
    if name is None:
        return TemplateChoice(None, None, reason)
    missing = [what for what, has in (("tool calls", tools), ("reasoning", thinking)) if has]
    notes = (f"{' and '.join(missing)} {'is' if missing == ['reasoning'] else 'are'} not offered to Ollama (this TEMPLATE "
             f"uses neither .Tools nor .Thinking): {extended}",) if missing else ()
    return TemplateChoice(name, TEMPLATES[name], notes=notes)


def pick_template(tokenizer: Any, bos_added: bool) -> tuple[str, str] | None:
    """(name, Go template) whose renders equal the chat template's for every probe, or None."""
    choice = choose_template(tokenizer, bos_added)
    return None if choice.template is None else (choice.name or "", choice.template)
