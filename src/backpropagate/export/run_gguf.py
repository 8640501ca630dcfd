"""Run an exported GGUF with llama.cpp (llama-cpp-python) through the GGUF's own chat template, as a user
of llama.cpp or Ollama would get it: one greedy reply (the demo, the parity report) or a conversation
(``backprop chat --gguf``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .parity import default_threads
from .quantize import require_llama_cpp

CHAT_CONTEXT = 4096  # tokens of conversation a chat keeps; the demo's one-turn replies need far fewer


class GgufChat:
    """A GGUF loaded once in llama.cpp, answering conversations; ``close()`` frees it."""

    def __init__(self, path: str | Path, *, adapter: str | Path | None = None, n_ctx: int = CHAT_CONTEXT) -> None:
        llama_cpp = require_llama_cpp()
        path = Path(path)
        extra = {"lora_path": str(adapter)} if adapter is not None else {}
        self.llm: Any = llama_cpp.Llama(str(path), n_ctx=n_ctx, verbose=False, seed=0,  # type: ignore[attr-defined]
                                        n_threads=default_threads(path), **extra)

    def reply(self, messages: Sequence[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
              on_text: Callable[[str], Any] | None = None) -> str:
        """The reply to ``messages``; greedy at ``temperature`` 0; ``on_text`` gets it piece by piece.
        Generation stops at the model's end-of-turn tokens."""
        sampling = {"temperature": temperature} if temperature > 0 else {"temperature": 0.0, "top_k": 1}
        chunks = self.llm.create_chat_completion(messages=list(messages), max_tokens=max_tokens, stream=True,
                                                 **sampling)
        parts = []
        for chunk in chunks:
            piece = chunk["choices"][0]["delta"].get("content") or ""
            if piece:
                parts.append(piece)
                if on_text is not None:
                    on_text(piece)
        return "".join(parts).strip()

    def close(self) -> None:
        self.llm.close()


def chat_with_gguf(path: str | Path, prompt: str, *, system: str | None = None, max_tokens: int = 64,
                   adapter: str | Path | None = None) -> str:
    """Greedy reply to one user message."""
    chat = GgufChat(path, adapter=adapter, n_ctx=1024)
    try:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        return chat.reply(messages, max_tokens=max_tokens)
    finally:
        chat.close()
