"""PEFT LoRA adapter -> GGUF LoRA adapter, loadable by llama.cpp on top of the base GGUF (Ollama's ADAPTER).

Layout follows llama.cpp's own adapter files: ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha``, and for every adapted weight ``<gguf name>.lora_a`` (rank x in) and ``.lora_b``
(out x rank). llama.cpp scales each pair by ``alpha / rank``; where PEFT's scale differs (rsLoRA,
per-module rank or alpha patterns) the difference is folded into ``lora_b`` so the product is exact.
For families whose q/k rows are permuted in the base GGUF, the rows of ``lora_b`` are permuted alike, and
the family rules of :mod:`.gguf_families` (Qwen3.5's value-head order, Gemma 2's query scale) apply to the
pair as they apply to the base weight.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..errors import BackpropagateError
from .gguf_arch import arch_spec, gguf_tensor_name, interleave_rotary_rows, is_rotary_projection, read_hparams
from .gguf_families import source_name, text_config, transform_lora
from .gguf_writer import load_config
from .merge import check_adapter, resolve_source

_LORA_NAME = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


@dataclass
class AdapterWriteResult:
    path: Path
    alpha: float
    n_pairs: int


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches the module name or its dotted suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _peft_scale(config: dict[str, Any], module: str) -> float:
    rank = int(_pattern_value(config.get("rank_pattern") or {}, module, config["r"]))
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _pairs(adapter_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    from safetensors import safe_open

    file = adapter_dir / "adapter_model.safetensors"
    if not file.is_file():
        raise BackpropagateError("INPUT_UNSUPPORTED_ADAPTER", f"{adapter_dir} has no adapter_model.safetensors.")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    with safe_open(file, framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            match = _LORA_NAME.match(name)
            if match is None:
                raise BackpropagateError("INPUT_UNSUPPORTED_ADAPTER",
                                         f"adapter tensor {name!r} is not a LoRA A/B matrix (embedding LoRA, "
                                         "trained norms or fully retrained modules cannot be exported).")
            pairs.setdefault(match["module"], {})[match["part"]] = handle.get_tensor(name).float().numpy()
    return pairs


def write_adapter_gguf(adapter_dir: str | Path, base_dir: str | Path, output: str | Path) -> AdapterWriteResult:
    """Write the LoRA adapter in ``adapter_dir`` (trained on the model in ``base_dir``) as a GGUF adapter."""
    import gguf

    source = resolve_source(adapter_dir)
    if source.kind != "adapter":
        raise BackpropagateError("INPUT_NOT_A_MODEL_DIR", f"{source.path} is not a PEFT adapter folder.")
    config = source.adapter_config or {}
    check_adapter(config, for_gguf_adapter=True)
    base_config = load_config(Path(base_dir))
    spec = arch_spec(base_config)
    hp = read_hparams(base_config, spec)
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_enum, hp.n_layers)
    alpha = float(config["lora_alpha"])

    writer = gguf.GGUFWriter(path=None, arch=spec.gguf_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    tensors: list[tuple[str, np.ndarray]] = []
    for module, pair in pairs_items(_pairs(source.path)):
        if set(pair) != {"A", "B"}:
            raise BackpropagateError("INPUT_UNSUPPORTED_ADAPTER", f"{module} lacks its lora_A or lora_B matrix.")
        lora_a, lora_b = pair["A"], pair["B"]
        rank = lora_a.shape[0]
        factor = _peft_scale(config, module) * rank / alpha
        if not math.isclose(factor, 1.0, rel_tol=1e-7):
            lora_b = lora_b * np.float32(factor)
        module = source_name(spec.family, module) or module
        lora_a, lora_b = transform_lora(spec.family, module, lora_a, lora_b, text_config(base_config))
        weight_name = module + ".weight"
        if spec.permute_qk:
            is_q, is_k = is_rotary_projection(weight_name)
            if is_q or is_k:
                lora_b = interleave_rotary_rows(lora_b, hp.n_head if is_q else hp.n_head_kv)
        base_name = gguf_tensor_name(name_map, weight_name)
        tensors += [(base_name + ".lora_a", lora_a), (base_name + ".lora_b", lora_b)]
    for name, data in tensors:
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))

    output = Path(output)
    with atomic_file(output) as partial:
        try:
            writer.write_header_to_file(partial)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.flush()
        finally:
            writer.close()
    return AdapterWriteResult(path=output, alpha=alpha, n_pairs=len(tensors) // 2)


def pairs_items(pairs: dict[str, dict[str, np.ndarray]]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Modules in block order, so the file reads like the base model's."""
    def key(item: tuple[str, Any]) -> tuple[int, str]:
        found = re.search(r"\.layers\.(\d+)\.", item[0])
        return (int(found.group(1)) if found else -1, item[0])

    return sorted(pairs.items(), key=key)
