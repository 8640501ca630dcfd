"""Quantization names, and the K-quants done by llama.cpp's own quantizer (through llama-cpp-python).

``f32``/``f16``/``bf16``/``q8_0`` are written directly by :mod:`.gguf_writer`. The other types start from
an f16 (or bf16) GGUF and go through ``llama_model_quantize``, the same code as the ``llama-quantize``
tool. Where a tensor's rows are not a multiple of the type's block (256 for K-quants) llama.cpp quietly
picks a fallback type; :func:`quantize_gguf` reads the result back and reports every such tensor.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackpropagateError
from .outputs import atomic_file

#: Every quantization the export accepts, in the order the CLI lists them.
QUANTIZATIONS: tuple[str, ...] = ("q4_k_m", "q5_k_m", "q6_k", "q4_0", "q8_0", "f16", "bf16", "f32")
DEFAULT_QUANTIZATION = "q4_k_m"
#: Types made by llama.cpp's quantizer, with the llama_ftype value and the main GGML type they aim for.
LLAMA_CPP_TYPES: dict[str, tuple[int, str]] = {
    "q4_k_m": (15, "Q4_K"), "q5_k_m": (17, "Q5_K"), "q6_k": (18, "Q6_K"), "q4_0": (2, "Q4_0")}
#: Minimum top-1 agreement with the PyTorch model; other types are reported without a threshold.
AGREEMENT_THRESHOLDS: dict[str, float] = {"f32": 0.99, "f16": 0.99, "bf16": 0.99, "q8_0": 0.95}
#: llama.cpp's K-quant mixes deliberately keep some tensors at higher precision; not fallbacks.
_MIX_TYPES = {"Q4_K": {"Q4_K", "Q6_K", "Q5_K"}, "Q5_K": {"Q5_K", "Q6_K"}, "Q6_K": {"Q6_K"}, "Q4_0": {"Q4_0", "Q6_K"}}


def normalize_quantization(name: str) -> str:
    """Lower-case and check a quantization name; INPUT_UNKNOWN_QUANTIZATION lists the valid ones."""
    value = str(name).strip().lower()
    if value not in QUANTIZATIONS:
        raise BackpropagateError("INPUT_UNKNOWN_QUANTIZATION",
                                 f"unknown quantization {name!r}; choose one of {', '.join(QUANTIZATIONS)}.")
    return value


def require_llama_cpp() -> object:
    """llama_cpp, with its C log routed to Python logging and shown only for errors (or in debug mode)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackpropagateError(
            "DEP_EXTRA_MISSING",
            "llama-cpp-python is not installed; it quantizes K-quants and runs the parity check.",
            hint='pip install "backpropagate[export]" (on AMX CPUs build it with CMAKE_ARGS="-DGGML_NATIVE=OFF").'
        ) from exc
    debug = os.environ.get("BACKPROPAGATE_DEBUG", "").lower() in {"1", "true", "yes"}
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if debug else logging.ERROR)
    return llama_cpp


@dataclass
class QuantizeResult:
    path: Path
    quantization: str
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type name -> tensor count
    fallbacks: list[str] = field(default_factory=list)


def tensor_types(path: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, GGML type name, shape in llama.cpp order) of every tensor in a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(path)
    return [(t.name, t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in reader.tensors]


def _fallbacks(path: Path, target: str) -> tuple[dict[str, int], list[str]]:
    import gguf

    counts: dict[str, int] = {}
    notes: list[str] = []
    allowed = _MIX_TYPES[target]
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[target]][0]
    for name, type_name, shape in tensor_types(path):
        counts[type_name] = counts.get(type_name, 0) + 1
        if len(shape) >= 2 and type_name not in allowed:
            reason = f"rows of {shape[0]} are not a multiple of {block}" if shape[0] % block else "llama.cpp's choice"
            notes.append(f"{name}: {type_name} instead of {target} ({reason})")
    return counts, notes


def quantize_gguf(source: Path, output: Path, quantization: str, *, threads: int | None = None) -> QuantizeResult:
    """Quantize the f16/bf16 GGUF ``source`` into ``output`` with llama.cpp (written atomically)."""
    quantization = normalize_quantization(quantization)
    if quantization not in LLAMA_CPP_TYPES:
        raise BackpropagateError("INPUT_UNKNOWN_QUANTIZATION",
                                 f"{quantization} is written directly, not by llama.cpp's quantizer.")
    llama_cpp = require_llama_cpp()
    ftype, target = LLAMA_CPP_TYPES[quantization]
    params = llama_cpp.llama_model_quantize_default_params()  # type: ignore[attr-defined]
    params.ftype = ftype
    params.nthread = threads or (1 if source.stat().st_size < 256 * 2**20 else os.cpu_count() or 1)
    with atomic_file(output) as partial:
        status = llama_cpp.llama_model_quantize(  # type: ignore[attr-defined]
            str(source).encode(), str(partial).encode(), ctypes.byref(params))
        if status != 0 or not partial.is_file():
            raise BackpropagateError("RUNTIME_QUANTIZE_FAILED",
                                     f"llama.cpp could not quantize {source.name} to {quantization} "
                                     f"(status {status}).")
    counts, notes = _fallbacks(output, target)
    return QuantizeResult(path=output, quantization=quantization, tensor_types=counts, fallbacks=notes)
