"""Family rules beyond the plain decoder layout: Gemma 2/3, Qwen3.5 (hybrid Gated DeltaNet) and Phi-3 LongRoPE.

Each rule reproduces what llama.cpp's own converter writes for the family, so llama.cpp's graph for that
architecture computes what transformers computes:

* Gemma and Qwen3.5 RMSNorms scale by ``1 + w``; llama.cpp multiplies by ``w``, so ``1`` is added on the way
  out (not to Qwen3.5's gated ``linear_attn.norm``, which already scales by ``w``).
* llama.cpp scales Gemma queries by ``1/sqrt(head_dim)`` (``1/sqrt(n_embd/n_head)`` for the 62-layer 27B);
  where ``query_pre_attn_scalar`` asks for another scale the ratio is folded into the weights (Gemma 3: the
  q-norm, which follows the projection; Gemma 2: the q projection, as rope is linear), so it stays exact.
* Qwen3.5's linear-attention layers: ``A_log`` becomes ``-exp(A_log)``, ``dt_bias`` is llama.cpp's
  ``ssm_dt.bias``, the conv kernel loses its singleton axis, and when there are fewer key than value heads
  the value heads move from grouped (HF's ``repeat_interleave``) to tiled order (ggml's broadcast).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

GEMMA_FAMILIES = ("gemma2", "gemma3")
QWEN35 = "qwen3.5"
_LINEAR, _FULL, _SLIDING = "linear_attention", "full_attention", "sliding_attention"
# llama.cpp's Gemma graphs use ggml_gelu (the tanh approximation).
_GEMMA_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new")
# llama.cpp's Gemma 2/3 27B rule (n_layer == 62 for Gemma 3, 46 for Gemma 2): scale by n_embd / n_head.
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def text_config(config: Any) -> Any:
    """The text model's config (composite vision-language configs keep it under ``text_config``)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


# --------------------------------------------------------------------------- checks


def family_problem(family: str, config: Any) -> str | None:
    """Why llama.cpp cannot run this family's config as transformers does, or None."""
    if family in GEMMA_FAMILIES:
        return _gemma_problem(family, config)
    if family == QWEN35:
        return _qwen35_problem(config)
    return None


def _gemma_problem(family: str, config: Any) -> str | None:
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if act not in _GEMMA_ACTIVATIONS:
        return f"{family} with activation {act!r}: llama.cpp runs Gemma with the tanh GELU only"
    if getattr(config, "use_bidirectional_attention", False):
        return f"{family} with bidirectional attention (an embedding model) is not a causal LM llama.cpp runs"
    if family == "gemma3" and getattr(config, "attn_logit_softcapping", None):
        return "gemma3 with attn_logit_softcapping: llama.cpp's gemma3 graph has no attention soft-capping"
    if family == "gemma2" and not getattr(config, "tie_word_embeddings", True):
        return "gemma2 with an untied lm_head: llama.cpp's gemma2 always reuses the token embedding"
    if getattr(config, "attention_bias", False):
        return f"{family} with attention biases is not supported by llama.cpp's {family} graph"
    kinds = set(layer_types(config))
    if not kinds <= {_SLIDING, _FULL}:
        return f"{family} layer types {sorted(kinds)} are not sliding/full attention"
    sliding = _rope_params(config, _SLIDING)
    if sliding.get("rope_type", "default") != "default":
        return f"{family} rope scaling on sliding-window layers cannot be expressed in GGUF"
    return None


def _qwen35_problem(config: Any) -> str | None:
    kinds = set(layer_types(config))
    if not kinds <= {_LINEAR, _FULL}:
        return f"qwen3.5 layer types {sorted(kinds)} are not linear/full attention"
    if config.linear_key_head_dim != config.linear_value_head_dim:
        return ("qwen3.5 with linear_key_head_dim != linear_value_head_dim: llama.cpp's qwen35 graph uses one "
                "head size for both")
    if config.linear_num_value_heads % config.linear_num_key_heads:
        return "qwen3.5 linear_num_value_heads must be a multiple of linear_num_key_heads"
    if getattr(config, "attention_bias", False):
        return "qwen3.5 with attention biases is not supported by llama.cpp's qwen35 graph"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"qwen3.5 with activation {config.hidden_act!r}: llama.cpp runs it with SiLU only"
    return None


def layer_types(config: Any) -> list[str]:
    return list(getattr(config, "layer_types", None) or [])


def _rope_params(config: Any, layer_type: str) -> dict[str, Any]:
    """The rope parameters of one layer type (Gemma 3 nests them per type; others share one dict)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    return dict(rope.get(layer_type) or rope)


def full_rope_parameters(config: Any) -> dict[str, Any]:
    """The rope parameters of the global (full-attention) layers: what ``<arch>.rope.*`` describes."""
    return _rope_params(config, _FULL)


# --------------------------------------------------------------------------- hyper-parameters


def add_family_hparams(writer: Any, family: str, config: Any, rope_dims: int) -> None:
    """Write the keys llama.cpp's converter adds for Gemma 2/3 and Qwen3.5."""
    if family in GEMMA_FAMILIES:
        _add_gemma_hparams(writer, family, config)
    elif family == QWEN35:
        _add_qwen35_hparams(writer, config, rope_dims)


def _add_gemma_hparams(writer: Any, family: str, config: Any) -> None:
    types = layer_types(config)
    window = getattr(config, "sliding_window", None)
    if window and _SLIDING in types:
        writer.add_sliding_window(int(window))
        writer.add_sliding_window_pattern([t == _SLIDING for t in types])
        if family == "gemma3":
            writer.add_rope_freq_base_swa(float(_rope_params(config, _SLIDING).get("rope_theta") or 10000.0))
    elif family == "gemma2":  # llama.cpp's gemma2 always slides; a window as long as the context never bites
        writer.add_sliding_window(int(config.max_position_embeddings))
    if family == "gemma2" and getattr(config, "attn_logit_softcapping", None):
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))


def _add_qwen35_hparams(writer: Any, config: Any, rope_dims: int) -> None:
    writer.add_ssm_conv_kernel(int(config.linear_conv_kernel_dim))
    writer.add_ssm_state_size(int(config.linear_key_head_dim))
    writer.add_ssm_group_count(int(config.linear_num_key_heads))
    writer.add_ssm_time_step_rank(int(config.linear_num_value_heads))
    writer.add_ssm_inner_size(int(config.linear_value_head_dim * config.linear_num_value_heads))
    types = layer_types(config)
    interval = int(getattr(config, "full_attention_interval", None) or 4)
    writer.add_full_attention_interval(interval)
    if types != [_LINEAR if (i + 1) % interval else _FULL for i in range(len(types))]:
        # the gguf package has no helper for this key yet; llama.cpp reads it as a per-layer bool array
        writer.add_array(f"{writer.arch}.attention.recurrent_layers", [t == _LINEAR for t in types])
    writer.add_rope_dimension_sections(mrope_sections(config, rope_dims // 2))


def mrope_sections(config: Any, n_pairs: int) -> list[int]:
    """Qwen3.5's interleaved-MRoPE sections, padded to 4; derived when the config's do not cover the pairs.

    llama.cpp rotates a pair with the 4th position (0 for text) when no section claims it, and aborts when
    the sections add up to more than the rotary dimensions; transformers rotates every pair with the text
    position. For text all three positions are equal, so any covering split is exact.
    """
    given = list(full_rope_parameters(config).get("mrope_section") or [11, 11, 10])[:4]
    given += [0] * (4 - len(given))
    if sum(given) <= 2 * n_pairs and all(_imrope_axis(p % sum(given), given) < 3 for p in range(n_pairs)):
        return given
    return [-(-n_pairs // 3), -(-(n_pairs - 1) // 3), -(-(n_pairs - 2) // 3), 0]


def _imrope_axis(sector: int, sections: list[int]) -> int:
    """Which position (t=0, h=1, w=2, extra=3) ggml's interleaved MRoPE uses for a rotary pair."""
    axis = sector % 3
    return axis if sector < 3 * sections[axis] else 3


def longrope_attn_factor(config: Any) -> float:
    """transformers' LongRoPE cos/sin scale (explicit ``attention_factor`` or the paper's default)."""
    rope = dict(config.rope_parameters)
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    original = int(rope["original_max_position_embeddings"])
    factor = float(rope.get("factor") or config.max_position_embeddings / original)
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


# --------------------------------------------------------------------------- tensors


def source_name(family: str, hf_name: str) -> str | None:
    """The checkpoint name as the gguf name map knows it; None for tensors llama.cpp does not load."""
    if hf_name.startswith("model.language_model."):
        hf_name = "model." + hf_name.removeprefix("model.language_model.")
    if hf_name.startswith(("mtp.", "model.visual.", "model.mtp.")):
        return None  # multi-token-prediction head and vision tower: not part of the text GGUF
    if family == QWEN35 and hf_name.endswith(".linear_attn.dt_bias"):
        return hf_name.removesuffix("dt_bias") + "dt_proj.bias"
    return hf_name


def output_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape after :func:`transform_tensor` (the depthwise conv kernel loses its singleton axis)."""
    if name.endswith(".conv1d.weight") and len(shape) == 3:
        return (shape[0], shape[2])
    return shape


def transform_tensor(family: str, name: str, data: np.ndarray, config: Any) -> np.ndarray:
    """The numeric changes llama.cpp's converter makes for ``family`` (see the module docstring)."""
    if family in GEMMA_FAMILIES:
        if name.endswith("norm.weight"):
            data = data + np.float32(1.0)
        if name.endswith(_gemma_q_scaled(family)):
            data = data * np.float32(gemma_query_scale(family, config))
        return data
    if family != QWEN35:
        return data
    if name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
        data = data + np.float32(1.0)
    elif name.endswith(".linear_attn.A_log"):
        data = -np.exp(data)
    elif name.endswith(".conv1d.weight"):
        data = data.reshape(output_shape(name, data.shape))
    return _tile_value_heads(name, data, config, axis=None)


def transform_lora(family: str, module: str, lora_a: np.ndarray, lora_b: np.ndarray,
                   config: Any) -> tuple[np.ndarray, np.ndarray]:
    """The same changes for a LoRA pair on ``module`` (B holds the output rows, A the input columns)."""
    weight = module + ".weight"
    if family == "gemma2" and weight.endswith(_gemma_q_scaled(family)):
        lora_b = lora_b * np.float32(gemma_query_scale(family, config))
    if family == QWEN35:
        lora_b = _tile_value_heads(weight, lora_b, config, axis=0)
        if weight.endswith(".linear_attn.out_proj.weight"):
            lora_a = _tile_value_heads(weight, lora_a, config, axis=1)
    return lora_a, lora_b


def _gemma_q_scaled(family: str) -> str:
    return "self_attn.q_norm.weight" if family == "gemma3" else "self_attn.q_proj.weight"


def gemma_query_scale(family: str, config: Any) -> float:
    """Ratio of transformers' query scale (``query_pre_attn_scalar ** -0.5``) to the one llama.cpp applies."""
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    wanted = float(getattr(config, "query_pre_attn_scalar", None) or head_dim) ** -0.5
    if int(config.num_hidden_layers) == _GEMMA_27B_LAYERS[family]:
        applied = float(config.hidden_size // config.num_attention_heads) ** -0.5
    else:
        applied = float(head_dim) ** -0.5
    return wanted / applied


def _tile_value_heads(name: str, data: np.ndarray, config: Any, axis: int | None) -> np.ndarray:
    """Grouped -> tiled value-head order for Qwen3.5 linear attention with fewer key than value heads."""
    n_k, n_v = int(config.linear_num_key_heads), int(config.linear_num_value_heads)
    if n_k == n_v or ".linear_attn." not in name:
        return data
    head_v, key_dim = int(config.linear_value_head_dim), int(config.linear_key_head_dim) * n_k
    rows = data
    if name.endswith((".in_proj_qkv.weight", ".conv1d.weight")) and axis in (None, 0):
        qk, v = rows[: 2 * key_dim], rows[2 * key_dim:]
        return np.concatenate([qk, _regroup(v, 0, n_k, n_v // n_k, head_v)], axis=0)
    if name.endswith(".in_proj_z.weight") and axis in (None, 0):
        return _regroup(rows, 0, n_k, n_v // n_k, head_v)
    if name.endswith((".in_proj_a.weight", ".in_proj_b.weight", ".A_log", ".dt_proj.bias")) and axis in (None, 0):
        return _regroup(rows, 0, n_k, n_v // n_k, 1)
    if name.endswith(".out_proj.weight") and axis in (None, 1):
        return _regroup(rows, 1, n_k, n_v // n_k, head_v)
    return data


def _regroup(data: np.ndarray, axis: int, n_k: int, per_k: int, head: int) -> np.ndarray:
    """Reorder ``axis`` from [k-head][v-head within group][dim] to [v-head within group][k-head][dim]."""
    moved = np.moveaxis(data, axis, 0)
    rest = moved.shape[1:]
    split = moved.reshape(n_k, per_k, head, *rest).swapaxes(0, 1).reshape(moved.shape)
    return np.ascontiguousarray(np.moveaxis(split, 0, axis))
