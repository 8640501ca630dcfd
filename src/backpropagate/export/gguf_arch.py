"""What llama.cpp needs to know about each supported family: its GGUF architecture, hyper-parameters and
tensor layout.

The per-family facts follow llama.cpp itself (its ``convert_hf_to_gguf.py`` and the rope type each
architecture runs with): llama, mistral and smollm3 run rotary embeddings on *adjacent* pairs of a head
(``LLAMA_ROPE_TYPE_NORM``), while Hugging Face stores q/k rows for the *half-split* pairing, so their q/k
rows are permuted on the way out; qwen2, qwen3 and phi3 run the half-split (NeoX) pairing and are written
as they are. Phi-3 keeps its fused ``qkv_proj``/``gate_up_proj``, which llama.cpp reads directly.
Gemma 2/3 and Qwen3.5 need more than a name map; their rules live in :mod:`.gguf_families`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackpropagateError
from .gguf_families import (
    add_family_hparams,
    family_problem,
    full_rope_parameters,
    longrope_attn_factor,
    text_config,
)

#: The families the writer supports, by the name users know them by.
SUPPORTED_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "qwen3.5", "gemma2",
                                       "gemma3")


@dataclass(frozen=True)
class ArchSpec:
    """One supported Hugging Face architecture."""

    family: str
    gguf_arch: str  # the llama.cpp architecture name (general.architecture)
    permute_qk: bool  # llama.cpp rotates adjacent pairs: q/k rows must be interleaved


ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("llama", "llama", True),
    "MistralForCausalLM": ArchSpec("mistral", "llama", True),
    "Qwen2ForCausalLM": ArchSpec("qwen2", "qwen2", False),
    "Qwen3ForCausalLM": ArchSpec("qwen3", "qwen3", False),
    "Phi3ForCausalLM": ArchSpec("phi3", "phi3", False),
    "SmolLM3ForCausalLM": ArchSpec("smollm3", "smollm3", True),
    "Gemma2ForCausalLM": ArchSpec("gemma2", "gemma2", False),
    "Gemma3ForCausalLM": ArchSpec("gemma3", "gemma3", False),
    "Qwen3_5ForCausalLM": ArchSpec("qwen3.5", "qwen35", False),
}

# Rope scalings llama.cpp reproduces from metadata alone (llama3 through a rope_freqs tensor, Phi-3's
# longrope through its rope_factors_long/short tensors).
_ROPE_TYPES = ("default", "linear", "llama3")
_FAMILY_ROPE_TYPES = {"phi3": ("default", "linear", "longrope"), "qwen3.5": ("default",),
                      "gemma2": ("default", "linear"), "gemma3": ("default", "linear")}
# llama.cpp hard-codes SmolLM3's "no rope every 4th layer" rule; other layouts cannot be expressed.
_SMOLLM3_NO_ROPE_INTERVAL = 4


def arch_spec(config: Any) -> ArchSpec:
    """The spec for ``config`` (a transformers config); INPUT_UNSUPPORTED_ARCHITECTURE otherwise."""
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    what = ", ".join(names) or getattr(config, "model_type", "?")
    raise BackpropagateError(
        "INPUT_UNSUPPORTED_ARCHITECTURE",
        f"cannot export architecture {what} to GGUF; supported families: {', '.join(SUPPORTED_FAMILIES)}.")


def check_architecture(config: Any) -> str | None:
    """None when a model with this config can be exported to GGUF, otherwise the reason why not.

    Reads the config only (no weights), so it can run before training starts rather than after it.
    """
    try:
        read_hparams(config, arch_spec(config))
    except BackpropagateError as exc:
        if exc.code != "INPUT_UNSUPPORTED_ARCHITECTURE":
            raise
        return exc.message
    return None


@dataclass(frozen=True)
class HParams:
    """The hyper-parameters the GGUF header carries, read once from the config."""

    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    rms_eps: float
    rope_theta: float
    rope_dims: int
    rope_type: str
    rope_factor: float | None
    n_vocab: int
    tied_embeddings: bool


def _unsupported(message: str) -> BackpropagateError:
    return BackpropagateError("INPUT_UNSUPPORTED_ARCHITECTURE", message)


def _check_family(config: Any, spec: ArchSpec, rope_type: str) -> None:
    allowed = _FAMILY_ROPE_TYPES.get(spec.family, _ROPE_TYPES)
    if rope_type not in allowed:
        raise _unsupported(f"{spec.family} with rope scaling {rope_type!r} cannot be exported to GGUF yet "
                           f"(supported: {', '.join(allowed)}).")
    if spec.family == "smollm3":
        layers = list(getattr(config, "no_rope_layers", None) or [])
        expected = [int((i + 1) % _SMOLLM3_NO_ROPE_INTERVAL != 0) for i in range(config.num_hidden_layers)]
        if layers and layers != expected:
            raise _unsupported("this SmolLM3 config skips rope on other layers than every 4th, which llama.cpp "
                               "cannot express.")
    if getattr(config, "use_sliding_window", False) and spec.family in ("qwen2", "qwen3", "smollm3"):
        raise _unsupported(f"{spec.family} with sliding-window attention is not supported by the export.")
    problem = family_problem(spec.family, config)
    if problem:
        raise _unsupported(problem + ".")


def read_hparams(config: Any, spec: ArchSpec) -> HParams:
    """Collect and validate what the GGUF header needs; unsupported variants are coded errors."""
    config = text_config(config)
    n_head = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    rope = full_rope_parameters(config)
    rope_type = str(rope.get("rope_type") or rope.get("type") or "default")
    _check_family(config, spec, rope_type)
    partial = float(rope.get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None) or 1.0)
    return HParams(
        n_layers=int(config.num_hidden_layers), n_embd=int(config.hidden_size),
        n_ff=int(config.intermediate_size), n_head=n_head,
        n_head_kv=int(getattr(config, "num_key_value_heads", None) or n_head), head_dim=head_dim,
        n_ctx=int(config.max_position_embeddings), rms_eps=float(config.rms_norm_eps),
        rope_theta=float(rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0),
        rope_dims=int(partial * head_dim), rope_type=rope_type,
        rope_factor=float(rope["factor"]) if rope.get("factor") is not None else None,
        n_vocab=int(config.vocab_size), tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)))


def add_hparams(writer: Any, spec: ArchSpec, hp: HParams, config: Any) -> None:
    """Write the ``<arch>.*`` keys llama.cpp reads for ``spec``."""
    import gguf

    config = text_config(config)
    writer.add_context_length(hp.n_ctx)
    writer.add_embedding_length(hp.n_embd)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_block_count(hp.n_layers)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_dimension_count(hp.rope_dims)
    writer.add_vocab_size(hp.n_vocab)
    if hp.rope_type == "linear" and hp.rope_factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hp.rope_factor)
    if spec.family == "phi3":
        rope = dict(getattr(config, "rope_parameters", None) or {})
        original = (rope.get("original_max_position_embeddings")
                    or getattr(config, "original_max_position_embeddings", None) or hp.n_ctx)
        writer.add_rope_scaling_orig_ctx_len(int(original))
        writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))
        if hp.rope_type == "longrope":
            writer.add_rope_scaling_attn_factors(longrope_attn_factor(config))
    add_family_hparams(writer, spec.family, config, hp.rope_dims)


def extra_tensors(hp: HParams, config: Any) -> dict[str, np.ndarray]:
    """Tensors llama.cpp needs that the checkpoint does not hold: Llama 3.1's rope frequency factors and
    Phi-3's LongRoPE long/short factors (llama.cpp picks one set by the context size, as HF does by length)."""
    config = text_config(config)
    if hp.rope_type == "longrope":
        import gguf

        rope = dict(config.rope_parameters)
        names = gguf.TENSOR_NAMES
        factors = {names[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight": rope.get("long_factor"),
                   names[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight": rope.get("short_factor")}
        if any(f is None or len(f) != hp.rope_dims // 2 for f in factors.values()):
            raise _unsupported(f"longrope needs long_factor and short_factor of {hp.rope_dims // 2} values each.")
        return {name: np.asarray(f, dtype=np.float32) for name, f in factors.items()}
    if hp.rope_type != "llama3":
        return {}
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = 1.0 / (hp.rope_theta ** (np.arange(0, hp.rope_dims, 2, dtype=np.float64) / hp.rope_dims))
    # llama.cpp divides each base frequency by its factor; the factor is the ratio of the two.
    return {"rope_freqs.weight": (base / scaled.double().numpy()).astype(np.float32)}


def interleave_rotary_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows (or bias) of every head from half-split to adjacent rotary pairs.

    Hugging Face rotates element ``j`` of a head with element ``j + d/2``; llama.cpp's NORM rope rotates
    ``2i`` with ``2i + 1``. Row ``h*d + half*d/2 + i`` therefore moves to ``h*d + 2*i + half``.
    """
    rows = weight.shape[0]
    head_dim = rows // n_heads
    split = weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
    return np.ascontiguousarray(split.swapaxes(1, 2).reshape(weight.shape))


def is_rotary_projection(hf_name: str) -> tuple[bool, bool]:
    """(is a q projection, is a k projection) for a weight or bias name."""
    return (hf_name.endswith(("q_proj.weight", "q_proj.bias")),
            hf_name.endswith(("k_proj.weight", "k_proj.bias")))


def gguf_tensor_name(name_map: Any, hf_name: str) -> str:
    """The GGUF name of a Hugging Face tensor; INPUT_UNSUPPORTED_ARCHITECTURE for names llama.cpp lacks."""
    mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise BackpropagateError("INPUT_UNSUPPORTED_ARCHITECTURE",
                                 f"tensor {hf_name!r} has no counterpart in llama.cpp's architecture.")
    return mapped


def skip_tensor(hf_name: str, hp: HParams) -> bool:
    """Buffers and duplicates that llama.cpp does not load."""
    if hf_name.endswith(".rotary_emb.inv_freq"):
        return True
    return hf_name == "lm_head.weight" and hp.tied_embeddings
