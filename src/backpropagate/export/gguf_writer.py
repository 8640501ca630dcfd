"""Hugging Face folder -> GGUF, written with llama.cpp's own ``gguf`` package and no compiler.

Output types ``f32``, ``f16``, ``bf16`` and ``q8_0`` are produced in numpy. Tensors are streamed: the
header is written from the safetensors *headers* alone, then each tensor is read lazily
(``safetensors.safe_open``), converted, written and dropped before the next one is touched, so peak
memory stays near the largest single tensor, not the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..errors import BackpropagateError
from .gguf_arch import (
    ArchSpec,
    HParams,
    add_hparams,
    arch_spec,
    extra_tensors,
    gguf_tensor_name,
    interleave_rotary_rows,
    is_rotary_projection,
    read_hparams,
    skip_tensor,
)
from .gguf_families import output_shape, source_name, text_config, transform_tensor
from .gguf_tokenizer import VocabInfo, add_vocab, read_vocab

#: Output types the writer produces itself (no llama.cpp binary involved).
NUMPY_TYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass
class WriteResult:
    """What was written: the file, its type, the vocabulary facts and any per-tensor fallback."""

    path: Path
    out_type: str
    arch: ArchSpec
    vocab: VocabInfo
    n_tensors: int
    n_params: int
    fallbacks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the file to write: where it comes from, its GGUF name, shape and type."""

    hf_name: str | None  # the checkpoint's name; None for tensors made here (rope_freqs)
    canonical: str | None  # the name the family rules and gguf's name map know it by
    gguf_name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType


def safetensors_files(model_dir: Path) -> dict[str, Path]:
    """tensor name -> file holding it, from the index (sharded) or the single file."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise BackpropagateError("INPUT_NOT_A_MODEL_DIR", f"{model_dir} holds no model.safetensors.")
    from safetensors import safe_open

    with safe_open(single, framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)


def _shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(set(files.values())):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name in files:
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def _out_qtype(out_type: str, shape: tuple[int, ...], name: str, fallbacks: list[str]) -> Any:
    import gguf

    qt = gguf.GGMLQuantizationType
    if len(shape) < 2 or name == "rope_freqs.weight" or name.endswith(".ssm_conv1d.weight"):
        return qt.F32  # norms, biases, rope factors and conv kernels stay f32, as llama.cpp expects
    wanted = {"f32": qt.F32, "f16": qt.F16, "bf16": qt.BF16, "q8_0": qt.Q8_0}[out_type]
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    if shape[-1] % block:
        fallbacks.append(f"{name}: rows of {shape[-1]} are not a multiple of {block}, written as f16")
        return qt.F16
    return wanted


def _nbytes(shape: tuple[int, ...], qtype: Any) -> tuple[tuple[int, ...], Any, int]:
    """(shape as given to add_tensor_info, numpy dtype, byte size)."""
    import gguf

    qt = gguf.GGMLQuantizationType
    if qtype in (qt.F32, qt.F16):
        dtype = np.float32 if qtype == qt.F32 else np.float16
        return shape, dtype, int(np.prod(shape)) * np.dtype(dtype).itemsize
    byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.uint8, int(np.prod(byte_shape))


def plan_tensors(files: dict[str, Path], hp: HParams, spec: ArchSpec, extra: dict[str, np.ndarray],
                 out_type: str, fallbacks: list[str]) -> list[PlannedTensor]:
    """Every tensor of the file in llama.cpp's order, from the safetensors headers alone (``fallbacks`` collects
    the ones written as f16); public so the export benchmark's whole-state-dict baseline converts the same way."""
    import gguf

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_enum, hp.n_layers)
    shapes = {name: shape for name, shape in _shapes(files).items() if source_name(spec.family, name) is not None}
    canonical = {name: str(source_name(spec.family, name)) for name in shapes}
    embed = next((shapes[n] for n, c in canonical.items() if c == "model.embed_tokens.weight"), None)
    if embed is None:
        raise BackpropagateError("INPUT_NOT_A_MODEL_DIR", "the checkpoint has no model.embed_tokens.weight.")
    if embed[0] != hp.n_vocab:
        raise BackpropagateError("STATE_VOCAB_MISMATCH",
                                 f"config.vocab_size is {hp.n_vocab} but the embedding has {embed[0]} rows.")
    planned: list[PlannedTensor] = []
    for name in sorted(shapes, key=lambda n: _tensor_order(canonical[n])):
        if skip_tensor(canonical[name], hp):
            continue
        gguf_name = gguf_tensor_name(name_map, canonical[name])
        shape = output_shape(canonical[name], shapes[name])
        planned.append(PlannedTensor(name, canonical[name], gguf_name, shape,
                                _out_qtype(out_type, shape, gguf_name, fallbacks)))
    for gguf_name, array in extra.items():
        planned.append(PlannedTensor(None, None, gguf_name, array.shape, _out_qtype(out_type, array.shape, gguf_name,
                                                                               fallbacks)))
    return planned


def _tensor_order(name: str) -> tuple[int, int, str]:
    """Embeddings first, then blocks in numeric order, then the head: the order llama.cpp files use."""
    parts = name.split(".")
    if "layers" in parts:
        idx = parts.index("layers")
        if idx + 1 < len(parts) and parts[idx + 1].isdigit():
            return (1, int(parts[idx + 1]), name)
    return (0 if "embed" in name else 2, 0, name)


def _load(files: dict[str, Path], name: str) -> np.ndarray:
    """One tensor as float32 numpy, read alone from its file."""
    from safetensors import safe_open

    with safe_open(files[name], framework="pt") as handle:
        return handle.get_tensor(name).float().numpy()


def convert_tensor(item: PlannedTensor, data: np.ndarray, spec: ArchSpec, hp: HParams, config: Any) -> np.ndarray:
    """One source tensor as it goes into the file: the family's transform, rotary interleave, then the type."""
    import gguf

    if item.canonical is not None:
        data = transform_tensor(spec.family, item.canonical, data, config)
    if item.canonical is not None and spec.permute_qk:
        is_q, is_k = is_rotary_projection(item.canonical)
        if is_q or is_k:
            data = interleave_rotary_rows(data, hp.n_head if is_q else hp.n_head_kv)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), item.qtype)


def file_type(out_type: str) -> int:
    import gguf

    ft = gguf.LlamaFileType
    return {"f32": ft.ALL_F32, "f16": ft.MOSTLY_F16, "bf16": ft.MOSTLY_BF16, "q8_0": ft.MOSTLY_Q8_0}[out_type]


def model_name(name: str, vocab: VocabInfo) -> str:
    """general.name for the file, with "phi3" in it exactly when the tokenizer strips like Phi-3's.

    llama.cpp strips the spaces after special tokens the way Phi-3's tokenizer does only when
    general.name contains "phi3"/"phi-3" (``VocabInfo.strip_rule == "phi3"``); any other tokenizer must
    not carry the word, or llama.cpp would tokenize it differently from Hugging Face.
    """
    has_phi3 = re.search(r"(?i)phi-?3", name) is not None
    if vocab.strip_rule == "phi3":
        return name if has_phi3 else f"{name}-phi3"
    return re.sub(r"(?i)phi-?3", "phi", name)


def load_config(model_dir: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir)
    except Exception as exc:  # noqa: BLE001 - a broken config.json is the user's input
        raise BackpropagateError("INPUT_NOT_A_MODEL_DIR", f"cannot read {model_dir}/config.json: {exc}") from exc


def write_gguf(model_dir: str | Path, output: str | Path, out_type: str = "f16", *,
               name: str | None = None) -> WriteResult:
    """Convert the Hugging Face model in ``model_dir`` to a GGUF file at ``output`` (atomically).

    ``out_type`` is one of :data:`NUMPY_TYPES`. Tensors whose rows the type cannot hold fall back to f16
    (listed in ``WriteResult.fallbacks``), like llama.cpp's converter does.
    """
    import gguf
    from transformers import AutoTokenizer

    model_dir, output = Path(model_dir), Path(output)
    if out_type not in NUMPY_TYPES:
        raise BackpropagateError("INPUT_UNKNOWN_QUANTIZATION",
                                 f"the GGUF writer makes {', '.join(NUMPY_TYPES)}, not {out_type!r}.")
    config = load_config(model_dir)
    spec = arch_spec(config)
    hp = read_hparams(config, spec)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = read_vocab(model_dir, tokenizer, hp.n_vocab)
    files = safetensors_files(model_dir)
    extra = extra_tensors(hp, config)
    fallbacks: list[str] = []
    planned = plan_tensors(files, hp, spec, extra, out_type, fallbacks)

    writer = gguf.GGUFWriter(path=None, arch=spec.gguf_arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(model_name(name or model_dir.name, vocab))
    writer.add_file_type(file_type(out_type))
    if out_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hparams(writer, spec, hp, config)
    add_vocab(writer, vocab)
    for item in planned:
        shape, dtype, nbytes = _nbytes(item.shape, item.qtype)
        raw = None if dtype is not np.uint8 else item.qtype
        writer.add_tensor_info(item.gguf_name, shape, np.dtype(dtype), nbytes, raw_dtype=raw)

    with atomic_file(output) as partial:
        try:
            writer.open_output_file(partial)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for item, data in zip(planned, _stream(planned, files, extra), strict=True):
                writer.write_tensor_data(convert_tensor(item, data, spec, hp, text_config(config)))
            writer.flush()
        finally:
            writer.close()
    n_params = sum(int(np.prod(p.shape)) for p in planned)
    return WriteResult(path=output, out_type=out_type, arch=spec, vocab=vocab, n_tensors=len(planned),
                       n_params=n_params, fallbacks=fallbacks)


def _stream(planned: list[PlannedTensor], files: dict[str, Path], extra: dict[str, np.ndarray]) -> Iterator[np.ndarray]:
    for item in planned:
        yield _load(files, item.hf_name) if item.hf_name is not None else extra[item.gguf_name]
