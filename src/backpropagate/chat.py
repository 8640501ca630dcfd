"""Talk to what a run saved: an adapter folder (loaded on its base, adapter on), a full model folder, or an
exported GGUF (through llama.cpp). ``backprop chat`` and ``Trainer.load_adapter`` use it; ``backprop eval``
loads its model with the same :func:`load_saved`.

A conversation keeps its turns, so a follow-up question sees the earlier answers. With an adapter, the base
model (the adapter switched off, same loaded weights) can answer the same conversation for comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BackpropagateError, check_count
from .export.merge import ExportSource, check_adapter, find_base, resolve_source
from .export.run_gguf import GgufChat
from .logs import redact
from .models import peft_wrapping, quiet_progress
from .training.answers import generate_reply

CHAT_MAX_NEW_TOKENS = 256  # a chat answer; `--max-new-tokens` for longer ones
OnText = Callable[[str], Any]


@dataclass
class SavedModel:
    """A saved folder loaded for use: the model (with its adapter on, if it has one) and its tokenizer."""
    model: Any
    tokenizer: Any
    source: ExportSource
    base_name: str | None  # the base an adapter was loaded on; None for a full model folder

    @property
    def has_adapter(self) -> bool:
        return self.source.kind == "adapter"


def saved_adapter_dir(model: str | Path | None) -> Path | None:
    """``model`` as a folder when it is an adapter a run saved (it holds adapter_config.json), else None."""
    if model is None:
        return None
    folder = Path(model).expanduser()
    return folder.resolve() if (folder / "adapter_config.json").is_file() else None


def adapter_base_name(folder: Path) -> str | None:
    """The base an adapter folder names (unchecked: it is loaded, and checked, only when needed)."""
    try:
        return resolve_source(folder).base_name
    except BackpropagateError:
        return None


def load_saved(path: str | Path, *, base: str | Path | None = None, trust_remote_code: bool = False) -> SavedModel:
    """Load an adapter folder on its base (``base`` replaces the one its adapter_config names, e.g. when that
    name was redacted) or a full model folder; the tokenizer is the folder's own when it saved one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(path)
    base_name = None
    if source.kind == "adapter":
        check_adapter(source.adapter_config or {})
        base_name = find_base(source, base)
    weights = base_name or str(source.path)
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        with quiet_progress():
            model: Any = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype,
                                                              trust_remote_code=trust_remote_code)
        if base_name is not None:
            from peft import PeftModel

            with peft_wrapping():
                model = PeftModel.from_pretrained(model, str(source.path))
    except Exception as exc:  # noqa: BLE001 - shape mismatches and unreadable weights alike
        raise BackpropagateError("DEP_BASE_MODEL_NOT_FOUND", f"{redact(str(source.path))} does not load on "
                                 f"{redact(weights)!r}: {redact(str(exc))[:300]}",
                                 hint="Pass the base model it was trained on (--base).") from exc
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    tokenizer_dir = source.path if (source.path / "tokenizer_config.json").is_file() else weights
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return SavedModel(model, tokenizer, source, base_name)


def find_gguf(path: str | Path) -> Path:
    """``path`` itself when it is a .gguf file, else the one .gguf in the folder (an export's output)."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if len(found) == 1:
        return found[0]
    what = "holds no .gguf file" if path.is_dir() and not found else (
        f"holds {len(found)} .gguf files" if found else "is not a .gguf file or a folder holding one")
    raise BackpropagateError("INPUT_NOT_A_MODEL_DIR", f"{redact(str(path))!r} {what}.",
                             hint="Pass the .gguf file itself (e.g. ./output/gguf/model-q4_k_m.gguf).")


@dataclass
class ChatSession:
    """One conversation with a saved model: its turns, the system prompt and how answers are generated.

    ``ask`` answers with the tuned model (adapter on); ``compare`` answers the same turn with the base
    first, then the tuned model (the conversation keeps the tuned answer). Open one with :meth:`open`.
    """
    saved: SavedModel | None = None
    gguf: GgufChat | None = None
    system: str | None = None
    max_new_tokens: int = CHAT_MAX_NEW_TOKENS
    temperature: float = 0.0
    turns: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def open(cls, source: str | Path, *, base: str | Path | None = None, gguf: bool = False,
             system: str | None = None, max_new_tokens: int = CHAT_MAX_NEW_TOKENS, temperature: float = 0.0,
             trust_remote_code: bool = False) -> ChatSession:
        """Load ``source``: a .gguf file (or ``gguf=True``: a folder holding one) runs in llama.cpp; anything
        else is an adapter or full model folder, loaded with transformers."""
        check_count("max_new_tokens", max_new_tokens)
        if not 0 <= temperature <= 5:
            raise BackpropagateError("INPUT_INVALID_VALUE", f"temperature must be between 0 and 5, got {temperature}.",
                                     hint="0 answers greedily (the same answer every time).")
        settings: dict[str, Any] = {"system": system, "max_new_tokens": max_new_tokens, "temperature": temperature}
        if gguf or str(source).endswith(".gguf"):
            if base is not None:
                raise BackpropagateError("INPUT_INVALID_VALUE", "--base applies to an adapter folder, not a GGUF.",
                                         hint="A GGUF holds its whole model: leave --base out.")
            return cls(gguf=GgufChat(find_gguf(source)), **settings)
        return cls(saved=load_saved(source, base=base, trust_remote_code=trust_remote_code), **settings)

    @property
    def can_compare(self) -> bool:
        """Whether a base model can answer too: only an adapter has one to switch off."""
        return self.saved is not None and self.saved.has_adapter

    def ask(self, prompt: str, *, on_text: OnText | None = None) -> str:
        """The tuned model's answer to ``prompt``, which joins the conversation with it."""
        answer = self._answer(prompt, adapter=True, on_text=on_text)
        self.turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return answer

    def ask_base(self, prompt: str, *, on_text: OnText | None = None) -> str:
        """The base model's answer (adapter off) to the conversation plus ``prompt``; it does not join it."""
        self.require_base()
        return self._answer(prompt, adapter=False, on_text=on_text)

    def require_base(self) -> None:
        """STATE_NO_ADAPTER unless a base model can answer (:attr:`can_compare`)."""
        if not self.can_compare:
            raise BackpropagateError("STATE_NO_ADAPTER", "only an adapter folder has a base model to compare "
                                     "with: a full model folder or a GGUF holds one model.",
                                     hint="Chat with the adapter folder (the run's ./output/lora) instead.")

    def compare(self, prompt: str) -> tuple[str, str]:
        """(base answer, tuned answer) to the same conversation plus ``prompt``; the tuned one joins it."""
        return self.ask_base(prompt), self.ask(prompt)

    def reset(self) -> None:
        """Start the conversation again (the system prompt stays)."""
        self.turns.clear()

    def close(self) -> None:
        if self.gguf is not None:
            self.gguf.close()

    def _answer(self, prompt: str, *, adapter: bool, on_text: OnText | None) -> str:
        if not prompt.strip():
            raise BackpropagateError("INPUT_INVALID_VALUE", "the message is empty.", hint="Type a question.")
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.turns + [
            {"role": "user", "content": prompt}]
        if self.gguf is not None:
            return self.gguf.reply(messages, max_tokens=self.max_new_tokens, temperature=self.temperature,
                                   on_text=on_text)
        assert self.saved is not None
        return generate_reply(self.saved.model, self.saved.tokenizer, messages, max_new_tokens=self.max_new_tokens,
                              adapter=adapter, temperature=self.temperature,
                              on_text=on_text)
