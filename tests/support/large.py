"""A larger random Llama checkpoint (~126 M parameters by default) for memory and speed measurements.

The tiny models are too small to tell "memory grows with the largest tensor" from "memory grows with the
model". This one is built from transformers' own ``LlamaConfig`` with random weights written straight to
safetensors (no model object, so building it costs about the size of the file), and the tiny Llama's
tokenizer; it is not meant to say anything sensible.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def llama_tensor_shapes(hidden: int, layers: int, intermediate: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Llama with full (non-grouped) attention and an untied output head."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden),
                                          "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[prefix + f"self_attn.{name}.weight"] = (hidden, hidden)
        shapes[prefix + "mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[prefix + "mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[prefix + "mlp.down_proj.weight"] = (hidden, intermediate)
        shapes[prefix + "input_layernorm.weight"] = (hidden,)
        shapes[prefix + "post_attention_layernorm.weight"] = (hidden,)
    return shapes


def build_random_llama(output_dir: str | Path, *, hidden: int = 768, layers: int = 12, intermediate: int = 3072,
                       vocab: int = 8192, heads: int = 12, seed: int = 0) -> Path:
    """Write the checkpoint into ``output_dir`` (created) and return it."""
    from safetensors.numpy import save_file
    from transformers import LlamaConfig

    from backpropagate.testing.factory import build_tiny_model

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1000,
                         eos_token_id=1001, pad_token_id=1004)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "float32"
    config.save_pretrained(out)
    rng = np.random.default_rng(seed)
    tensors = {name: (rng.standard_normal(shape, dtype=np.float32) * 0.02 if len(shape) > 1
                      else np.ones(shape, dtype=np.float32))
               for name, shape in llama_tensor_shapes(hidden, layers, intermediate, vocab).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tiny = build_tiny_model("llama")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (tiny / name).is_file():
            shutil.copyfile(tiny / name, out / name)
    return out


def parameter_count(model_dir: str | Path) -> tuple[int, int]:
    """(total parameters, parameters of the largest tensor) read from the safetensors header."""
    from safetensors import safe_open

    sizes = []
    with safe_open(Path(model_dir) / "model.safetensors", framework="np") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            sizes.append(int(np.prod(handle.get_slice(name).get_shape())))
    return sum(sizes), max(sizes)
