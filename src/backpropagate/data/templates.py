"""Render examples with the model's own chat template and label only what the model should learn.

A conversation is rendered once, by ``tokenizer.apply_chat_template`` (never a hard-coded format), and
tokenised with character offsets. Each message's text is then located in the rendered string, in order;
tokens that overlap an assistant message, plus the end-of-turn token the template writes right after it,
keep their ids as labels and everything else becomes -100. This works for any template that copies
assistant text verbatim (all common families do); one that rewrites it raises INPUT_TEMPLATE_MISMATCH.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import BackpropagateError
from .formats import Conversation

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


def end_of_turn_marker(tokenizer) -> str | None:
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


def render(tokenizer, conversation: Conversation, *, row: int | None = None) -> str:
    """The conversation as the model's chat template writes it."""
    if not getattr(tokenizer, "chat_template", None):
        raise BackpropagateError(
            "INPUT_TEMPLATE_MISSING",
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template, so "
            "conversations cannot be rendered.")
    from jinja2 import TemplateError

    kwargs = {"tools": conversation.tools} if conversation.tools else {}
    try:
        return tokenizer.apply_chat_template(list(conversation.messages), tokenize=False, **kwargs)
    except TemplateError as exc:
        where = f"row {row}: " if row is not None else ""
        roles = ", ".join(m["role"] for m in conversation.messages)
        raise BackpropagateError(
            "INPUT_INVALID_CONVERSATION",
            f"{where}the model's chat template refused the conversation ({roles}): {exc}",
            hint="Reorder or drop turns so the template accepts them (many templates need user/assistant "
                 "alternation), or train on a model whose template supports these roles.") from exc


def _assistant_spans(text: str, conversation: Conversation, marker: str | None, row: int | None
                     ) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    cursor = 0
    for message in conversation.messages:
        if message["role"] == "system":
            continue  # templates move system text (Mistral puts it in the last user turn)
        content = message["content"]
        found = -1
        for needle in (content, content.strip()):
            if needle:
                found = text.find(needle, cursor)
                if found >= 0:
                    content = needle
                    break
        if found < 0:
            if message["role"] == "assistant" and content.strip():
                where = f"row {row}: " if row is not None else ""
                raise BackpropagateError(
                    "INPUT_TEMPLATE_MISMATCH",
                    f"{where}the chat template does not copy the assistant text verbatim "
                    f"({content[:40]!r}...), so the tokens to train on cannot be located.")
            continue
        end = found + len(content)
        cursor = end
        if message["role"] == "assistant":
            if marker and text.startswith(marker, end):
                end += len(marker)
            spans.append((found, end))
            cursor = end
    return spans


def tokenize_conversation(tokenizer, conversation: Conversation, *, train_on_responses: bool = True,
                          row: int | None = None, marker: str | None | bool = True) -> TokenizedSample:
    """Token ids of the rendered conversation, labelled on assistant turns (or on everything).

    Each assistant turn is labelled together with the template's full end-of-turn marker; ``marker``
    passes one already found by :func:`end_of_turn_marker` (``True``: find it here).
    """
    text = render(tokenizer, conversation, row=row)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    if not train_on_responses:
        return TokenizedSample(ids, list(ids))
    if marker is True:
        marker = end_of_turn_marker(tokenizer)
    spans = _assistant_spans(text, conversation, marker or None, row)
    labels = [IGNORE_INDEX] * len(ids)
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
    for row, example in enumerate(examples, start=1):
        if isinstance(example, str):
            out.append(tokenize_text(tokenizer, example))
            continue
        if marker is True and train_on_responses:
            marker = end_of_turn_marker(tokenizer)  # once: the probe renders the template
        out.append(tokenize_conversation(tokenizer, example, train_on_responses=train_on_responses,
                                         row=row, marker=marker))
    return out
