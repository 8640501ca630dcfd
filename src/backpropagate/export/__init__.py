"""Export a trained adapter: merged weights, GGUF (verified against PyTorch), adapter GGUF, Ollama, the Hub.

The public entry points are :func:`export_model` (what ``backprop export`` and ``Trainer.export`` call) and
:func:`push_folder` (``backprop push`` / ``Trainer.push``); the building blocks are importable from their
modules (``merge``, ``gguf_writer``, ``quantize``, ``parity``, ``adapter_gguf``, ``ollama``, ``hub``).
Heavy libraries are imported inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["FORMATS", "QUANTIZATIONS", "ExportResult", "export_model", "merge_adapter", "push_folder",
           "verify_gguf", "write_gguf"]

_LAZY = {
    "FORMATS": ".pipeline", "ExportResult": ".pipeline", "export_model": ".pipeline",
    "QUANTIZATIONS": ".quantize", "merge_adapter": ".merge", "push_folder": ".hub",
    "verify_gguf": ".parity", "write_gguf": ".gguf_writer",
}

if TYPE_CHECKING:
    from .gguf_writer import write_gguf
    from .hub import push_folder
    from .merge import merge_adapter
    from .parity import verify_gguf
    from .pipeline import FORMATS, ExportResult, export_model
    from .quantize import QUANTIZATIONS


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)
