"""Verifying an exported GGUF: the reference files of the same weights, the parity check, export_report.json.

A quantized file is judged against files of the same weights (see :mod:`.parity`): the f16/bf16 GGUF
(the intermediate a K-quant is made from, or one more quick write for q8_0) and, for a type the writer
quantizes itself, llama.cpp's quantizer's file of that type made from the same f16. They are written into
a temporary folder that is removed afterwards. A file that fails is renamed ``*.parity-failed.gguf`` so
it cannot be mistaken for a good one; the report is written beside it either way.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ..atomic import scratch_dir, write_text_atomically
from ..errors import BackpropagateError
from .gguf_writer import load_config, write_gguf
from .parity import ParityReport, References, verify_gguf
from .quantize import AGREEMENT_THRESHOLDS, REFERENCE_TYPES, quantize_gguf

REPORT_NAME = "export_report.json"
FAILED_MARK = ".parity-failed"


def full_precision_type(model_dir: Path) -> str:
    """The unquantized type quantized files start from: bf16 for bf16 checkpoints (their range), else f16."""
    dtype = str(getattr(load_config(model_dir), "dtype", "") or "")
    return "bf16" if "bfloat16" in dtype else "f16"


def scratch_folder(parent: Path, label: str) -> AbstractContextManager[Path]:
    """A hidden temporary folder beside the output (same filesystem), created and always removed."""
    return scratch_dir(parent, label)


def make_references(weights_dir: Path, quantization: str, folder: Path, *, full: Path | None = None,
                    name: str | None = None) -> References:
    """The files of the same weights a ``quantization`` GGUF is judged against, written into ``folder``
    (``full``: an f16/bf16 GGUF of these weights that already exists). None for f32/f16/bf16."""
    if quantization in AGREEMENT_THRESHOLDS:
        return References()
    full_type = full_precision_type(weights_dir)
    if full is None:
        full = write_gguf(weights_dir, folder / f"same-weights-{full_type}.gguf", full_type, name=name).path
    quantized = None
    if quantization in REFERENCE_TYPES:
        quantized = quantize_gguf(full, folder / f"llama.cpp-{quantization}.gguf", quantization,
                                  report_fallbacks=False).path
    return References(full=full, full_type=full_type, quantized=quantized)


def check_gguf(gguf_path: str | Path, reference_dir: str | Path, quantization: str, *,
               weights_dir: str | Path | None = None, adapter_path: str | Path | None = None,
               full: str | Path | None = None, name: str | None = None) -> ParityReport:
    """:func:`.parity.verify_gguf` with its reference files made (in a temporary folder beside the GGUF).

    ``weights_dir`` holds the weights the GGUF was written from (default ``reference_dir``; the base model
    for a base GGUF plus ``adapter_path``); ``full`` is their f16/bf16 GGUF where one already exists."""
    gguf_path = Path(gguf_path)
    weights = Path(weights_dir) if weights_dir is not None else Path(reference_dir)
    with scratch_folder(gguf_path.parent, "verify") as folder:
        refs = make_references(weights, quantization, folder, full=Path(full) if full else None, name=name)
        return verify_gguf(gguf_path, reference_dir, quantization, adapter_path=adapter_path, references=refs)


def mark_failed(path: Path) -> Path:
    """Rename ``x.gguf`` to ``x.parity-failed.gguf`` (kept, never deleted)."""
    marked = path.with_name(path.stem + FAILED_MARK + path.suffix)
    path.replace(marked)
    return marked


def finish_report(report: ParityReport, target: Path, extra: dict[str, Any], *,
                  companion: Path | None = None) -> Path:
    """Write export_report.json beside ``target``; on failure mark ``target`` (and ``companion``, the base
    GGUF of an adapter export) and raise RUNTIME_PARITY_FAILED."""
    data = {**report.to_dict(), **extra}
    if not report.passed:
        marked = mark_failed(target)
        data["gguf"] = str(marked)
        data["marked_as"] = str(marked)
        if companion is not None:
            data["base_marked_as"] = str(mark_failed(companion))
    path = write_text_atomically(target.with_name(REPORT_NAME), json.dumps(data, indent=2, default=str) + "\n")
    if not report.passed:
        raise BackpropagateError(
            "RUNTIME_PARITY_FAILED",
            f"the exported {report.quantization} GGUF does not behave like the PyTorch model: "
            f"{'; '.join(report.failures[:3])}. It was kept as {data['marked_as']} with {path}.")
    return path
