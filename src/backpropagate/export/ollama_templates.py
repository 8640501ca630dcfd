"""Which Ollama TEMPLATE (Go template) a model gets, verified by rendering.

Ollama passes the system prompt as ``.System`` and the turns as ``.Messages`` (each with ``.Role`` and
``.Content``); the generation prompt follows the last user turn. A TEMPLATE of :mod:`.ollama_formats` is only
used for a model if, rendered by :mod:`.gotemplate` for every probe conversation, it gives exactly the text
of the model's own chat template (after the bos token that llama.cpp adds by itself); the chat template is
rendered the way training renders it (no extra arguments, so a template that writes today's date writes
the real one). When none does, :func:`choose_template` says what differs, so the note is specific. Tool calls
and reasoning toggles are not translated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .gotemplate import render
from .ollama_formats import TEMPLATES

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

_CONTEXT = 40  # characters of each render quoted around the first difference


@dataclass(frozen=True)
class TemplateChoice:
    """The verified TEMPLATE (``name``/``template``), or None and ``reason``: why none reproduces the chat template."""

    name: str | None
    template: str | None
    reason: str = ""


def render_ollama(template: str, messages: list[dict[str, str]]) -> str:
    """The prompt Ollama builds for ``messages``: like its ``collate``, every system turn is joined into
    ``.System`` and consecutive turns of one role are merged into one."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns: list[dict[str, str]] = []
    for m in messages:
        if turns and turns[-1]["Role"] == m["role"]:
            turns[-1]["Content"] += "\n\n" + m["content"]
        else:
            turns.append({"Role": m["role"], "Content": m["content"]})
    return render(template, {"System": system, "Messages": turns})


def expected_prompt(tokenizer: Any, messages: list[dict[str, str]], bos_added: bool) -> str:
    """What the model's chat template renders, minus the bos that llama.cpp's tokenizer adds itself."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token or ""
    if bos_added and bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def _roles(probe: tuple[dict[str, str], ...]) -> str:
    return "/".join(m["role"] for m in probe)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _feature(want: str) -> str:
    """A feature of the chat template's text (near a difference) that no TEMPLATE variable reproduces."""
    if "<think>" in want or "</think>" in want:
        return "; it writes reasoning (<think>) blocks, which Ollama's .Messages cannot reproduce"
    if "Date:" in want:
        return "; it writes a date in a form no TEMPLATE here reproduces"
    return ""


def _difference(name: str, probe: tuple[dict[str, str], ...], got: str, want: str, matched: int) -> str:
    at = _common_prefix(got, want)
    start = max(0, at - _CONTEXT // 2)
    return (f"the closest Ollama TEMPLATE ({name!r}, {matched}/{len(PROBES)} probes equal) differs on the "
            f"{_roles(probe)} conversation at character {at}: it writes {got[start:at + _CONTEXT]!r} where the "
            f"chat template writes {want[start:at + _CONTEXT]!r}{_feature(want[start:at + _CONTEXT])}")


def _render_or_error(template: str, probe: tuple[dict[str, str], ...]) -> str:
    try:
        return render_ollama(template, list(probe))
    except (ValueError, TypeError, IndexError) as exc:  # a TEMPLATE our renderer cannot run counts as a miss
        return f"<render error: {exc}>"


def choose_template(tokenizer: Any, bos_added: bool) -> TemplateChoice:
    """The first TEMPLATE whose renders equal the chat template's for every probe, else why there is none."""
    if not getattr(tokenizer, "chat_template", None):
        return TemplateChoice(None, None, "the tokenizer has no chat template")
    expected = []
    for probe in PROBES:
        try:
            expected.append(expected_prompt(tokenizer, list(probe), bos_added))
        except Exception as exc:  # noqa: BLE001 - a template that refuses a probe cannot be verified
            return TemplateChoice(None, None, f"the chat template refuses a {_roles(probe)} conversation "
                                              f"({type(exc).__name__}: {exc}), so no TEMPLATE can be verified")
    best: tuple[int, int, str] | None = None  # (probes equal, common prefix of the first miss, reason)
    for name, template in TEMPLATES.items():
        renders = [_render_or_error(template, p) for p in PROBES]
        misses = [i for i, (got, want) in enumerate(zip(renders, expected, strict=True)) if got != want]
        if not misses:
            return TemplateChoice(name, template)
        i = misses[0]
        score = (len(PROBES) - len(misses), _common_prefix(renders[i], expected[i]))
        if best is None or score > best[:2]:
            best = (*score, _difference(name, PROBES[i], renders[i], expected[i], score[0]))
    assert best is not None
    return TemplateChoice(None, None, best[2])


def pick_template(tokenizer: Any, bos_added: bool) -> tuple[str, str] | None:
    """(name, Go template) whose renders equal the chat template's for every probe, or None."""
    choice = choose_template(tokenizer, bos_added)
    return None if choice.template is None else (choice.name or "", choice.template)
