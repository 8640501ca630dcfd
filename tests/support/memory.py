"""Process memory readings for memory tests and benchmarks (Linux ``/proc``)."""

from __future__ import annotations

import ctypes
import gc
import json
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def proc_status_bytes(field: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``, ...) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def settle_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS shows what is still held."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live CPU tensors created while active, and how many of them are at least ``min_width`` wide.

    Every tensor an operator returns is counted until it is freed; at the peak of the total, the bytes of
    tensors whose last dimension is at least ``min_width`` (with a small model body: the logits, slices
    of them and their gradients) are noted. Temporaries inside one kernel are not seen, nor tensors that
    existed before the mode was entered.
    """

    def __init__(self, min_width: int) -> None:
        super().__init__()
        self.min_width = min_width
        self.live: dict[int, tuple[int, bool]] = {}
        self.total = self.wide = self.peak = self.wide_at_peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            if t.device.type == "cpu":
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live:
            return  # a view or an in-place result of a tensor already counted
        wide = t.dim() > 0 and t.shape[-1] >= self.min_width
        self.live[key] = (size, wide)
        self.total += size
        self.wide += size * wide
        weakref.finalize(t, self._free, key)
        if self.total > self.peak:
            self.peak, self.wide_at_peak = self.total, self.wide

    def _free(self, key: int) -> None:
        size, wide = self.live.pop(key, (0, False))
        self.total -= size
        self.wide -= size * wide


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors an operator returned: one, or a (nested) tuple or list of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for item in value for t in _tensors(item)]
    return []


def build_wide_vocab_model(work: Path, vocab: int = 151_936, rows: int = 40) -> tuple[Path, Path]:
    """A Qwen2 with a ``vocab``-word head and a tiny body (hidden 64, 2 layers, fp32), so the logits
    dominate memory as in a real 7B run, and ``rows`` text rows of well over 2048 tokens each.

    The tiny llama tokenizer is saved with it: its ids are valid in the larger vocabulary.
    """
    from transformers import AutoModelForCausalLM, Qwen2Config

    from backpropagate.testing import build_tiny_tokenizer
    from backpropagate.testing.corpus import corpus

    tok = build_tiny_tokenizer("llama")
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    lines = corpus()
    texts = [{"text": " ".join(lines[(i + j) % len(lines)] for j in range(60))} for i in range(rows)]
    (work / "data.jsonl").write_text("\n".join(json.dumps(r) for r in texts) + "\n")
    return work / "model", work / "data.jsonl"
