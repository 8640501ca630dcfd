"""Run an exported GGUF with llama.cpp (llama-cpp-python): one greedy chat reply, through the GGUF's own
chat template, as a user of llama.cpp or Ollama would get it."""

from __future__ import annotations

from pathlib import Path

from .parity import default_threads
from .quantize import require_llama_cpp


def chat_with_gguf(path: str | Path, prompt: str, *, system: str | None = None, max_tokens: int = 64,
                   adapter: str | Path | None = None) -> str:
    """Greedy reply to one user message; generation stops at the model's end-of-turn tokens."""
    llama_cpp = require_llama_cpp()
    path = Path(path)
    extra = {"lora_path": str(adapter)} if adapter is not None else {}
    llm = llama_cpp.Llama(str(path), n_ctx=1024, verbose=False, seed=0,  # type: ignore[attr-defined]
                          n_threads=default_threads(path), **extra)
    try:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        reply = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=max_tokens)
        return str(reply["choices"][0]["message"]["content"] or "").strip()
    finally:
        llm.close()
