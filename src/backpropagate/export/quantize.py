"""Quantization names, and the K-quants done by llama.cpp's own quantizer (through llama-cpp-python).

``f32``/``f16``/``bf16``/``q8_0`` are written directly by :mod:`.gguf_writer`. The other types start from
an f16 (or bf16) GGUF and go through ``llama_model_quantize``, the same code as the ``llama-quantize``
tool. Where a tensor's rows are not a multiple of the type's block (256 for K-quants) llama.cpp quietly
picks a fallback type; :func:`quantize_gguf` reads the result back and reports every such tensor.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_file
from ..errors import BackpropagateError

#: Every quantization the export accepts, in the order the CLI lists them.
QUANTIZATIONS: tuple[str, ...] = ("q4_k_m", "q5_k_m", "q6_k", "q4_0", "q8_0", "f16", "bf16", "f32")
DEFAULT_QUANTIZATION = "q4_k_m"
#: Types made by llama.cpp's quantizer, with the llama_ftype value and the main GGML type they aim for.
LLAMA_CPP_TYPES: dict[str, tuple[int, str]] = {
    "q4_k_m": (15, "Q4_K"), "q5_k_m": (17, "Q5_K"), "q6_k": (18, "Q6_K"), "q4_0": (2, "Q4_0")}
#: Minimum top-1 agreement with the PyTorch model of the unquantized types, and of the f16/bf16 file of the
#: same weights that every quantized export is also checked with (so a writer fault is not blamed on rounding).
AGREEMENT_THRESHOLDS: dict[str, float] = {"f32": 0.99, "f16": 0.99, "bf16": 0.99}
#: Types the writer quantizes itself; the parity check compares each with llama.cpp's quantizer's file of the
#: same type made from the same weights (llama_ftype, main GGML type).
REFERENCE_TYPES: dict[str, tuple[int, str]] = {"q8_0": (7, "Q8_0")}
#: Ours may be this much worse than llama.cpp's file: mean KLD at most (1 + KL_TOLERANCE) times its mean KLD
#: plus two standard errors of the paired difference; top-1 agreement at most TOP1_TOLERANCE (or two
#: standard errors of the paired difference, if larger) below its agreement.
KL_TOLERANCE = 0.25
TOP1_TOLERANCE = 0.02
#: The sanity ceiling for a quantized file with no llama.cpp file to be compared with (the K-quants, which
#: llama.cpp's quantizer made): its mean KLD from PyTorch may be at most this share of PyTorch's mean KLD from
#: a uniform guess (log V - entropy; a file that predicts nothing scores about 1). No fixed figure in nats
#: fits every model: a LoRA-tuned gemma-3-270m's correct q4_k_m is at 0.85 nats (share 0.08), SmolLM2-135M's
#: at 0.08; a file of other weights is above 1.
MAX_KLD_SHARE = 0.25
#: llama.cpp's K-quant mixes deliberately keep some tensors at higher precision; not fallbacks.
_MIX_TYPES = {"Q4_K": {"Q4_K", "Q6_K", "Q5_K"}, "Q5_K": {"Q5_K", "Q6_K"}, "Q6_K": {"Q6_K"}, "Q4_0": {"Q4_0", "Q6_K"},
              "Q8_0": {"Q8_0"}}


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


#: Byte sizes of GGUF's scalar metadata types (uint8 .. float64); 8 is a string and 9 an array.
_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip_value(buf: Any, offset: int, value_type: int) -> int:
    if value_type == 8:
        return offset + 8 + struct.unpack_from("<Q", buf, offset)[0]
    if value_type == 9:
        item_type, count = struct.unpack_from("<IQ", buf, offset)
        offset += 12
        if item_type in _GGUF_SCALARS:
            return offset + count * _GGUF_SCALARS[item_type]
        for _ in range(count):
            offset = _skip_value(buf, offset, item_type)
        return offset
    return offset + _GGUF_SCALARS[value_type]


def _read_string(buf: Any, offset: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, offset)
    return bytes(buf[offset + 8: offset + 8 + n]).decode("utf-8"), offset + 8 + n


def tensor_types(path: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, GGML type name, shape in llama.cpp order) of every tensor in a GGUF file.

    Reads the header alone, skipping the metadata values: ``gguf.GGUFReader`` makes an object per
    vocabulary entry, 14 s for Gemma 3's 262k tokens. Files it does not expect go to GGUFReader."""
    import gguf

    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
        if magic != b"GGUF" or version not in (2, 3):
            reader = gguf.GGUFReader(path)
            return [(t.name, t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in reader.tensors]
        offset = 24
        for _ in range(n_kv):
            offset = _read_string(buf, offset)[1]
            offset = _skip_value(buf, offset + 4, struct.unpack_from("<I", buf, offset)[0])
        result = []
        for _ in range(n_tensors):
            name, offset = _read_string(buf, offset)
            (n_dims,) = struct.unpack_from("<I", buf, offset)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, offset + 4)
            (type_id,) = struct.unpack_from("<I", buf, offset + 4 + 8 * n_dims)
            offset += 4 + 8 * n_dims + 4 + 8  # the dims, the type and the data offset
            result.append((name, gguf.GGMLQuantizationType(type_id).name, tuple(int(d) for d in dims)))
        return result


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


def quantize_gguf(source: Path, output: Path, quantization: str, *, threads: int | None = None,
                  report_fallbacks: bool = True) -> QuantizeResult:
    """Quantize the f16/bf16 GGUF ``source`` into ``output`` with llama.cpp (written atomically).

    ``q8_0`` is accepted too: the export writes its own, and this makes llama.cpp's to compare it with.
    ``report_fallbacks=False`` skips reading the result back (seconds for a 262k-token vocabulary)."""
    quantization = normalize_quantization(quantization)
    types = {**LLAMA_CPP_TYPES, **REFERENCE_TYPES}  # q8_0 only as the parity check's reference
    if quantization not in types:
        raise BackpropagateError("INPUT_UNKNOWN_QUANTIZATION",
                                 f"{quantization} is written directly, not by llama.cpp's quantizer.")
    llama_cpp = require_llama_cpp()
    ftype, target = types[quantization]
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
    if not report_fallbacks:
        return QuantizeResult(path=output, quantization=quantization)
    counts, notes = _fallbacks(output, target)
    return QuantizeResult(path=output, quantization=quantization, tensor_types=counts, fallbacks=notes)
