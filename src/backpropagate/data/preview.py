"""What a dataset row becomes for a model, before any training: the rendered text, which tokens are trained,
and the chat-template facts that decide it (fallbacks, reasoning kept or skipped).

One function serves ``backprop data preview``, ``Trainer.preview`` and the UI's dataset page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackpropagateError
from . import load_examples
from .chat_template import TemplateTraits, template_traits
from .formats import Conversation
from .templates import IGNORE_INDEX, end_of_turn_marker, tokenize_conversation, tokenize_text


@dataclass(frozen=True)
class RowPreview:
    """One row as the model is trained on it; ``segments`` are (text, trained) runs of tokens in order."""

    row: int
    total_rows: int
    input_ids: list[int]
    labels: list[int]
    segments: list[tuple[str, bool]]
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def trained_text(self) -> str:
        """The trained parts, one per line (what the labels decode to)."""
        return "\n".join(text for text, trained in self.segments if trained)

    def summary(self) -> str:
        return (f"row {self.row} of {self.total_rows}: {len(self.input_ids)} tokens, "
                f"{self.trained_tokens} trained")

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "total_rows": self.total_rows, "text": self.text, "tokens": len(self.input_ids),
                "trained_tokens": self.trained_tokens, "input_ids": self.input_ids, "labels": self.labels,
                "segments": [{"text": text, "trained": trained} for text, trained in self.segments],
                "notes": self.notes}


def segments(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int]) -> list[tuple[str, bool]]:
    """Consecutive tokens with the same trained flag, decoded together (so multi-byte characters stay whole)."""
    flags = [label != IGNORE_INDEX for label in labels]
    out: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            out.append((tokenizer.decode(list(input_ids[start:i]), skip_special_tokens=False), flags[start]))
            start = i
    return out


def template_notes(traits: TemplateTraits, examples: Sequence[Conversation | str]) -> list[str]:
    """The fallbacks this dataset needs and, on a thinking model, how many rows teach it to skip thinking."""
    conversations = [e for e in examples if isinstance(e, Conversation)]
    uses_tools = any(m.get("tool_calls") or m["role"] == "tool" for c in conversations for m in c.messages) or any(
        c.tools for c in conversations)
    reasons = any(m.get("reasoning_content") for c in conversations for m in c.messages)
    notes = [line for line in traits.fallbacks() if ("tool" in line and uses_tools) or ("reasoning" in line and reasons)]
    if traits.thinking:
        skipping = sum(1 for c in conversations if not _last_turn_reasons(c))
        if skipping:
            notes.append(f"{skipping} of {len(conversations)} rows have no reasoning in their last assistant turn: "
                         "on this thinking model they teach it to answer without thinking")
    return notes


def _last_turn_reasons(conversation: Conversation) -> bool:
    turns = [m for m in conversation.messages if m["role"] == "assistant"]
    return bool(turns and turns[-1].get("reasoning_content"))


def preview_example(tokenizer: Any, examples: Sequence[Conversation | str], row: int = 1, *,
                    train_on_responses: bool = True, traits: TemplateTraits | None = None) -> RowPreview:
    """Row ``row`` (1-based) of already loaded ``examples``, tokenized and labelled exactly as training does."""
    if isinstance(row, bool) or not isinstance(row, int) or not 1 <= row <= len(examples):
        raise BackpropagateError("INPUT_INVALID_VALUE",
                                 f"row={row!r} is invalid: expected a row number from 1 to {len(examples)}.")
    example = examples[row - 1]
    notes: list[str] = []
    if isinstance(example, str):
        sample = tokenize_text(tokenizer, example)
    else:
        traits = traits or template_traits(tokenizer)
        marker = end_of_turn_marker(tokenizer) if train_on_responses else None
        sample = tokenize_conversation(tokenizer, example, train_on_responses=train_on_responses, row=row,
                                       marker=marker, traits=traits)
        notes = template_notes(traits, [example])
    return RowPreview(row, len(examples), sample.input_ids, sample.labels,
                      segments(tokenizer, sample.input_ids, sample.labels), notes)


def preview(data: Any, tokenizer: Any, row: int = 1, *, train_on_responses: bool = True, format: str | None = None,
            text_column: str | None = None) -> RowPreview:
    """Load ``data`` (file, folder, hub name or rows) and preview row ``row`` with ``tokenizer``."""
    loaded = load_examples(data, require_assistant=train_on_responses, format=format, text_column=text_column)
    return preview_example(tokenizer, loaded.examples, row, train_on_responses=train_on_responses)
