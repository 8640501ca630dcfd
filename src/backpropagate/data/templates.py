"""Render examples with the model's own chat template and label only what the model should learn.

A conversation is rendered once, by ``tokenizer.apply_chat_template`` (never a hard-coded format), with
tool calls, tool results and reasoning in the structure templates read (:mod:`.chat_template` fills in
what a template cannot write). The trained parts are found in the rendering itself, not by searching for
message text: an assistant turn starts where the template's generation prompt for it ends and ends with the
template's end-of-turn marker. So tool calls in the template's own markup, reasoning where the template
shows it, and templates that rewrite earlier turns (Qwen3 drops earlier thinking, Mistral moves the system
prompt) are all labelled exactly; tool results, system and user text and the generation prompt are not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import BackpropagateError
from .chat_template import (
    THINK_CLOSE,
    TemplateTraits,
    once_per_template,
    refuse,
    template_messages,
    template_traits,
)
from .formats import Conversation, Message

IGNORE_INDEX = -100

# End-of-turn markers used by the major chat families; only those the tokenizer knows are used.
_END_OF_TURN_CANDIDATES = ("<|eot_id|>", "<|im_end|>", "<|end|>", "</s>", "<end_of_turn>",
                           "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>")


@dataclass(frozen=True)
class TokenizedSample:
    """One example as token ids and labels (labels are unshifted: label[i] is the target *at* token i)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def end_of_turn_tokens(tokenizer) -> list[str]:
    """The end-of-turn strings this tokenizer knows: its eos token and the family markers it has."""
    vocab = tokenizer.get_vocab()
    found = [tok for tok in _END_OF_TURN_CANDIDATES if tok in vocab]
    eos = tokenizer.eos_token
    if eos and eos not in found:
        found.insert(0, eos)
    return found


_PROBE_REPLY = "BACKPROP_END_OF_TURN_PROBE"
# What an end-of-turn marker looks like when the tokenizer does not know it: <|x|>, <x>, </x>, [X].
_MARKER_SHAPE = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?[A-Za-z_][A-Za-z0-9_]{0,39}>|\[/?[A-Z_]{2,40}\]")


def end_of_turn_marker(tokenizer: Any) -> str | None:
    """The marker the chat template writes right after every assistant reply (``<|im_end|>``, ...), found once
    per tokenizer and template by :func:`find_end_of_turn_marker`."""
    return once_per_template(tokenizer, "end_of_turn", find_end_of_turn_marker)


def find_end_of_turn_marker(tokenizer: Any) -> str | None:
    """The marker the chat template writes right after every assistant reply (``<|im_end|>``, ...).

    Found by rendering a probe conversation, so it is the template's own choice, not a guess from the
    vocabulary. None when the template writes no marker. A marker that is not one token of the vocabulary
    is refused (INPUT_TEMPLATE_END_OF_TURN): labelling a piece of it would teach the model to emit ``<``
    and never stop, and llama.cpp / Ollama could not stop on it either.
    """
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE_REPLY},
                {"role": "user", "content": "Bye"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses the probe is judged on real rows later
        try:  # some templates iterate `tools` even when there are none (Hermes' tool_use)
            text = tokenizer.apply_chat_template(messages, tokenize=False, tools=[])
        except Exception:  # noqa: BLE001
            return None
    end = text.find(_PROBE_REPLY)
    if end < 0:
        return None
    rest = text[end + len(_PROBE_REPLY):]
    specials = {t.content for t in tokenizer.added_tokens_decoder.values()} | set(end_of_turn_tokens(tokenizer))
    for token in sorted(specials, key=len, reverse=True):
        if token and rest.startswith(token):
            return token
    shaped = _MARKER_SHAPE.match(rest)
    if shaped:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(shaped.group(), add_special_tokens=False)["input_ids"])
        raise BackpropagateError(
            "INPUT_TEMPLATE_END_OF_TURN",
            f"the chat template ends every assistant reply with {shaped.group()!r}, which is not a token of "
            f"this tokenizer (it splits into {len(pieces)} pieces: {pieces[:6]}); the model could not learn "
            "to stop, and llama.cpp/Ollama could not stop on it.",
            hint="Use the chat template that belongs to this model, or add the marker as a special token "
                 "(tokenizer.add_special_tokens) and resize the model's embeddings before training.")
    return None


def _apply(tokenizer: Any, messages: list[Message], tools: list[dict[str, Any]] | None, *, prompt: bool = False,
           row: int | None = None) -> str:
    from jinja2 import TemplateError

    kwargs: dict[str, Any] = {"tools": tools} if tools is not None else {}
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt, **kwargs))
    except (TemplateError, TypeError, KeyError, ValueError) as exc:
        where = f"row {row}: " if row is not None else ""
        roles = ", ".join(m["role"] for m in messages)
        raise BackpropagateError(
            "INPUT_INVALID_CONVERSATION",
            f"{where}the model's chat template refused the conversation ({roles}): {type(exc).__name__}: {exc}",
            hint="Reorder or drop turns so the template accepts them (many templates need user/assistant "
                 "alternation, some need 9-character tool call ids), or train on a model whose template "
                 "supports these roles.") from exc


def _check_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise BackpropagateError(
            "INPUT_TEMPLATE_MISSING",
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template, so "
            "conversations cannot be rendered.")


@dataclass(frozen=True)
class RenderedConversation:
    """The training text of one conversation and the character spans of its trained assistant parts."""

    text: str
    spans: tuple[tuple[int, int], ...]
    reasoning_kept: bool = False  # the last turn's reasoning was written after a <think> generation prompt


def render(tokenizer: Any, conversation: Conversation, *, row: int | None = None,
           traits: TemplateTraits | None = None) -> str:
    """The conversation as the model's chat template writes it for training."""
    return render_with_spans(tokenizer, conversation, row=row, traits=traits, spans=False).text


def _drop_unshown_reasoning(tokenizer: Any, messages: list[Message], tools: list[dict[str, Any]] | None, text: str,
                            row: int | None) -> tuple[list[Message], str]:
    """Reasoning the template does not show in the whole conversation is removed from its turn, so that every
    prefix of the conversation renders those turns as the whole one does (Qwen3 drops earlier thinking)."""
    hidden = [i for i, m in enumerate(messages) if m.get("reasoning_content") and m["reasoning_content"] not in text]
    if not hidden:
        return messages, text
    messages = [{k: v for k, v in m.items() if not (i in hidden and k == "reasoning_content")}
                for i, m in enumerate(messages)]
    return messages, _apply(tokenizer, messages, tools, row=row)


def _turn_start(tokenizer: Any, messages: list[Message], tools: list[dict[str, Any]] | None, index: int, text: str,
                row: int | None) -> tuple[int, str]:
    """Where assistant turn ``index`` starts in ``text`` (after the generation prompt), and the end of the
    generation prompt that the training render leaves out (DeepSeek-R1's ``<think>\n``), if any."""
    prompt = _apply(tokenizer, messages[:index], tools, prompt=True, row=row)
    if text.startswith(prompt):
        return len(prompt), ""
    history = _apply(tokenizer, messages[:index], tools, row=row)
    opened = prompt[len(history):] if prompt.startswith(history) else ""
    for cut in _token_cuts(tokenizer, opened):  # the shortest end of the prompt the training render leaves out
        if text.startswith(prompt[:-cut]):
            return len(prompt) - cut, prompt[-cut:]
    return _aligned_end(tokenizer, prompt, text, opened, row)


def _token_cuts(tokenizer: Any, opened: str) -> list[int]:
    """Lengths of the generation prompt's endings that start on a token boundary, shortest first."""
    if not opened:
        return []
    offsets = tokenizer(opened, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = {start for start, _ in offsets if start < len(opened)} | {0}
    return sorted(len(opened) - start for start in starts)


def _aligned_end(tokenizer: Any, prompt: str, text: str, opened: str, row: int | None) -> tuple[int, str]:
    """The prompt's end in ``text`` for templates that place earlier text by what follows (Mistral writes the
    system prompt and the tool list next to the last user turn): the longest ending of the prompt, from its
    first difference with ``text``, is looked up in ``text`` (its first occurrence there)."""
    common = len(os.path.commonprefix([prompt, text]))
    for cut in [0, *_token_cuts(tokenizer, opened)]:
        tail = prompt[common:len(prompt) - cut]
        low, high = 0, len(tail)  # the smallest start whose suffix occurs: suffixes of occurring text occur
        while low < high:
            mid = (low + high) // 2
            if tail[mid:] in text[common:]:
                high = mid
            else:
                low = mid + 1
        anchor = tail[low:]
        if len(anchor) >= min(16, len(tail)) and anchor:
            return text.index(anchor, common) + len(anchor), prompt[len(prompt) - cut:]
    raise refuse(row, "the chat template renders the conversation so that an assistant turn cannot be located "
                 "(its prompt does not appear in the whole conversation).",
                 "Pass train_on_responses=False, or `backprop data preview` the row to see how the template "
                 "writes it.")


def _turn_end(tokenizer: Any, messages: list[Message], tools: list[dict[str, Any]] | None, index: int, text: str, start: int,
              marker: str | None, row: int | None) -> int:
    """The end of assistant turn ``index``: through the template's end-of-turn marker, else up to the next turn."""
    if marker:
        found = text.find(marker, start)
        if found >= 0:
            return found + len(marker)
    if index + 1 == len(messages):
        return len(text.rstrip())
    before_next = _apply(tokenizer, messages[:index + 1], tools, row=row)
    if text.startswith(before_next):
        return len(before_next.rstrip())
    raise refuse(row, "the chat template writes no end-of-turn marker and renders a turn differently when more "
                 "turns follow, so the end of an assistant turn cannot be located.",
                 "Pass train_on_responses=False, or use a template that ends turns with a marker.")


def render_with_spans(tokenizer: Any, conversation: Conversation, *, row: int | None = None,
                      traits: TemplateTraits | None = None, marker: str | None | bool = True,
                      spans: bool = True) -> RenderedConversation:
    """Render with the model's own template and find each assistant turn in the rendering itself.

    A turn starts where the template's generation prompt for it ends (so the prompt is never trained) and
    ends with the end-of-turn marker; the tool call markup, the answer and the reasoning the template shows
    lie in between. Where the template drops even the last turn's reasoning but its generation prompt opens
    ``<think>`` (DeepSeek-R1 distills), the reasoning is written after that prompt, as the model writes it.
    ``marker``: the end-of-turn marker of :func:`end_of_turn_marker` (``True``: find it here); ``spans=False``
    gives the text alone (training on every token).
    """
    _check_template(tokenizer)
    if marker is True:
        marker = end_of_turn_marker(tokenizer) if spans else None
    traits = traits or template_traits(tokenizer)
    messages, tools = template_messages(conversation, traits)
    text = _apply(tokenizer, messages, tools, row=row)
    messages, text = _drop_unshown_reasoning(tokenizer, messages, tools, text, row)
    thought = _last_reasoning(conversation)
    found: list[tuple[int, int]] = []
    kept = False
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or not (spans or (index == last and thought and traits.think_prompt)):
            continue
        start, left_out = _turn_start(tokenizer, messages, tools, index, text, row)
        if index == last and thought and traits.think_prompt and thought not in text:
            # the prompt's <think> is not trained; where this turn's prompt has none, the model writes it
            text = f"{text[:start]}{traits.think_opening}{thought}\n{THINK_CLOSE}\n\n{text[start:]}"
            start += len(traits.think_opening) if left_out else 0
            kept = True
        if not spans:
            continue
        end = _turn_end(tokenizer, messages, tools, index, text, start, marker or None, row)
        if end <= start:
            raise refuse(row, f"assistant turn {index + 1} is not written after its prompt by the chat template "
                         "(nothing to train on).", "Check the template with `backprop data preview`, or pass "
                         "train_on_responses=False.")
        found.append((start, end))
    return RenderedConversation(text, tuple(found), kept)


def _last_reasoning(conversation: Conversation) -> str | None:
    turns = [m for m in conversation.messages if m["role"] == "assistant"]
    return turns[-1].get("reasoning_content") if turns else None


def tokenize_conversation(tokenizer: Any, conversation: Conversation, *, train_on_responses: bool = True,
                          row: int | None = None, marker: str | None | bool = True,
                          traits: TemplateTraits | None = None) -> TokenizedSample:
    """Token ids of the rendered conversation, labelled on assistant turns (or on everything).

    ``marker`` passes the end-of-turn marker already found by :func:`end_of_turn_marker` (``True``: find it
    here); ``traits`` the template's traits (found here when None).
    """
    rendered = render_with_spans(tokenizer, conversation, row=row, traits=traits, marker=marker,
                                 spans=train_on_responses)
    encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    if not train_on_responses:
        return TokenizedSample(ids, list(ids))
    labels = [IGNORE_INDEX] * len(ids)
    spans = rendered.spans
    span_index = 0
    for i, (start, stop) in enumerate(encoded["offset_mapping"]):
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        if start < span_end and stop > span_start:
            labels[i] = ids[i]
    return TokenizedSample(ids, labels)


def tokenize_text(tokenizer, text: str) -> TokenizedSample:
    """A raw document: bos (when the tokenizer adds one) + text + eos, trained on every token."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return TokenizedSample(ids, list(ids))


def tokenize_examples(tokenizer, examples: Iterable[Conversation | str], *,
                      train_on_responses: bool = True) -> list[TokenizedSample]:
    """Tokenize every example; raw strings train on all tokens, conversations per ``train_on_responses``."""
    out = []
    marker: str | None | bool = True
    traits: TemplateTraits | None = None
    for row, example in enumerate(examples, start=1):
        if isinstance(example, str):
            out.append(tokenize_text(tokenizer, example))
            continue
        if traits is None:  # once: the probes render the template
            _check_template(tokenizer)
            marker = end_of_turn_marker(tokenizer) if train_on_responses else None
            traits = template_traits(tokenizer)
        out.append(tokenize_conversation(tokenizer, example, train_on_responses=train_on_responses,
                                         row=row, marker=marker, traits=traits))
    return out
