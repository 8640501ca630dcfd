"""Tiny random models of real architectures around REAL tokenizers and chat templates.

``build_real_family_model("gemma3")`` writes a folder that loads like google/gemma-3's text model: the
real ``Gemma3ForCausalLM`` class, the real 262k SentencePiece vocabulary and the real chat template
(from :mod:`.real_tokenizers`), with a few hundred thousand random transformer weights. It exercises
what the self-made tiny models of :mod:`.factory` cannot: real special tokens and end-of-turn markers,
byte-fallback vocabularies, real pre-tokenizers, hybrid attention, fused projections.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backpropagate.testing.factory import default_cache_dir

from .assets import build_once
from .real_tokenizers import REAL_FAMILIES, tokenizer_dir

#: Bump when the files written for the same arguments change, so stale caches are rebuilt.
REAL_FACTORY_VERSION = 3
MARKER_FILE = "backpropagate_real_family.json"
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM = 64, 128, 4, 2, 16


@dataclass(frozen=True)
class RealFamily:
    """The architecture a family's real checkpoints use, and what makes it that family."""

    family: str
    model_type: str  # transformers model_type of the text model
    end_of_turn: str  # what the real template writes after every assistant reply
    layers: int = 2
    config: dict[str, Any] = field(default_factory=dict)
    init_std: float = 0.2  # wide enough that top-1 choices are not near-ties


REAL_FAMILY_SPECS: dict[str, RealFamily] = {f.family: f for f in (
    RealFamily("qwen2.5", "qwen2", "<|im_end|>", config={"tie_word_embeddings": True}),
    RealFamily("qwen3", "qwen3", "<|im_end|>", config={"tie_word_embeddings": True, "head_dim": HEAD_DIM}),
    # Gated DeltaNet's recurrence amplifies quantization noise in a random model: narrower weights keep
    # its q4_k_m within the parity check's sanity ceiling (f16 stays exact).
    RealFamily("qwen3.5", "qwen3_5_text", "<|im_end|>", layers=4, init_std=0.05, config={
        "tie_word_embeddings": True, "head_dim": HEAD_DIM, "linear_num_key_heads": 2,
        "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
        "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"]}),
    RealFamily("llama3.2", "llama", "<|eot_id|>", config={
        "tie_word_embeddings": True, "head_dim": HEAD_DIM,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}}),
    RealFamily("smollm2", "llama", "<|im_end|>", config={"tie_word_embeddings": True, "head_dim": HEAD_DIM}),
    RealFamily("smollm3", "smollm3", "<|im_end|>", layers=4, config={"tie_word_embeddings": True}),
    RealFamily("mistral", "mistral", "</s>", config={"head_dim": HEAD_DIM, "sliding_window": None}),
    # not in REAL_FAMILIES: Mistral v0.3's tokenizer as transformers 5 writes it (tests/test_mistral_v03_export.py)
    RealFamily("mistral-v0.3-hf", "mistral", "</s>", config={"head_dim": HEAD_DIM, "sliding_window": None}),
    RealFamily("phi3.5", "phi3", "<|end|>", config={"original_max_position_embeddings": 2048}),
    RealFamily("gemma3", "gemma3_text", "<end_of_turn>", config={
        "head_dim": HEAD_DIM, "query_pre_attn_scalar": HEAD_DIM, "sliding_window": 64,
        "layer_types": ["sliding_attention", "full_attention"]}),
)}


def real_family_spec(family: str) -> RealFamily:
    if family not in REAL_FAMILY_SPECS:
        raise ValueError(f"unknown real family {family!r}; choose one of {', '.join(REAL_FAMILIES)}")
    return REAL_FAMILY_SPECS[family]


def _config(spec: RealFamily, tokenizer: Any) -> Any:
    from transformers import AutoConfig

    vocab = -(-len(tokenizer) // 64) * 64  # real embeddings are padded to a multiple of 64 or more
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=spec.layers,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **spec.config)
    config = AutoConfig.for_model(spec.model_type, **kwargs)
    config.dtype = "float32"
    return config


def _init_weights(model: Any, seed: int, std: float) -> None:
    """Re-draw every matrix from N(0, std) with a private RNG; norms, biases and the linear-attention
    decay parameters keep the family's own initialisation (Gemma's and Qwen3.5's ``1 + w`` norms start at 0)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def _stop_ids(tokenizer: Any, spec: RealFamily) -> list[int]:
    ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(spec.end_of_turn)]
    return list(dict.fromkeys(i for i in ids if i is not None))


def _write(path: Path, spec: RealFamily, seed: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source = tokenizer_dir(spec.family)
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = _config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _init_weights(model, seed, spec.init_std)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=_stop_ids(tokenizer, spec))
    model.save_pretrained(path)
    for item in source.iterdir():  # the tokenizer files exactly as the real model ships them
        if item.is_file() and not item.name.startswith("."):
            shutil.copy2(item, path / item.name)
    marker = {"version": REAL_FACTORY_VERSION, "family": spec.family, "seed": seed}
    (path / MARKER_FILE).write_text(json.dumps(marker, sort_keys=True) + "\n", encoding="utf-8")


def build_real_family_model(family: str, *, seed: int = 0) -> Path:
    """A cached tiny random checkpoint of ``family``'s real architecture with its real tokenizer."""
    spec = real_family_spec(family)
    marker = {"version": REAL_FACTORY_VERSION, "family": family, "seed": seed}

    def current(folder: Path) -> bool:
        try:
            return json.loads((folder / MARKER_FILE).read_text(encoding="utf-8")) == marker
        except (OSError, ValueError):
            return False

    return build_once(default_cache_dir(f"real-{family}", "tiny", seed), lambda tmp: _write(tmp, spec, seed),
                      is_done=current)
