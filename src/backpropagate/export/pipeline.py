"""``export_model``: one call from an adapter (or model) folder to a verified GGUF, an adapter GGUF, or merged
weights, optionally registered with Ollama.

Order of work, so that bad input fails before anything slow runs and nothing half-done is left behind:
check the arguments and output paths -> merge the adapter into a temporary full-precision folder ->
write the GGUF (and quantize it) -> parity check (:mod:`.verify`) -> Modelfile -> Ollama. Temporary
folders and intermediate files are removed whatever happens; finished files appear only complete.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import scratch_dir
from ..errors import BackpropagateError
from ..logs import get_logger
from ..models import quiet_progress
from .adapter_gguf import write_adapter_gguf
from .gguf_writer import NUMPY_TYPES, load_config, write_gguf
from .merge import ExportSource, check_adapter, find_base, local_model_dir, merge_adapter, resolve_source
from .model_card import write_run_record
from .ollama import build_modelfile, check_model_name, register, write_modelfile
from .ollama_formats import TEMPLATES
from .outputs import check_output_path
from .quantize import (
    DEFAULT_QUANTIZATION,
    LLAMA_CPP_TYPES,
    normalize_quantization,
    quantize_gguf,
    require_llama_cpp,
)
from .verify import FAILED_MARK, REPORT_NAME, check_gguf, finish_report, full_precision_type, scratch_folder

__all__ = ["FAILED_MARK", "FORMATS", "MODELFILE_NAME", "REPORT_NAME", "ExportResult", "export_model"]

FORMATS: tuple[str, ...] = ("gguf", "gguf-adapter", "merged")
MODELFILE_NAME = "Modelfile"
_finish_report = finish_report  # the name older callers import


@dataclass
class ExportResult:
    """What an export produced. ``path`` is the main artifact (GGUF file, adapter GGUF or merged folder)."""

    format: str
    path: Path
    quantization: str | None = None
    base_gguf: Path | None = None
    report: Any = None  # ParityReport when verified
    report_path: Path | None = None
    modelfile: Path | None = None
    ollama_model: str | None = None
    ollama_host: str | None = None
    notes: list[str] = field(default_factory=list)
    modelfile_spec: Any = None  # the ollama.Modelfile the file was written from

    def verdict(self) -> str:
        """One line: whether the file answers like the PyTorch model (the parity check), or that it was not run."""
        if self.report is None:
            return "parity: not checked"
        return "parity: passed" if self.report.passed else f"parity: FAILED ({'; '.join(self.report.failures)})"

    def summary(self) -> str:
        """What ``backprop export`` prints: the parity table, every file written, notes, the Ollama model."""
        lines = [self.report.table(), f"report: {self.report_path}"] if self.report is not None else []
        if self.base_gguf is not None:
            lines.append(f"base gguf: {self.base_gguf}")
        label = {"merged": "merged model", "gguf-adapter": "adapter gguf", "adapter": "adapter"}.get(self.format,
                                                                                                       "gguf")
        lines.append(f"{label}: {self.path}")
        lines += [f"note: {note}" for note in self.notes]
        if self.modelfile is not None:
            lines.append(f"modelfile: {self.modelfile}")
        if self.ollama_model:
            lines.append(f"ollama: registered {self.ollama_model} at {self.ollama_host}; "
                         f"run it with `ollama run {self.ollama_model}`")
        return "\n".join(lines)

    def __repr__(self) -> str:  # a notebook shows this: the summary, not the nested report
        return f"ExportResult ({self.format}, {self.verdict()})\n{self.summary()}"


def _artifact_name(path: Path) -> str:
    """A name for general.name: the run folder rather than trainer.save's generic "lora"."""
    generic = {"lora", "adapter", "merged", "model", "final"}
    return f"{path.parent.name}-{path.name}" if path.name in generic and path.parent.name else path.name


def _default_output(source: ExportSource, fmt: str, quantization: str) -> Path:
    stem = source.path.name
    if fmt == "merged":
        return source.path.with_name(f"{stem}-merged")
    folder = source.path.with_name(f"{stem}-gguf")
    return folder / ("adapter.gguf" if fmt == "gguf-adapter" else f"model-{quantization}.gguf")


def _gguf_target(output: str | Path | None, default: Path) -> Path:
    if output is None:
        return default
    output = Path(output).expanduser()
    return output if output.suffix == ".gguf" else output / default.name


def _write_model_gguf(model_dir: Path, target: Path, quantization: str, name: str, notes: list[str],
                      keep: Path | None = None) -> tuple[Any, Path | None]:
    """Write ``target`` directly (numpy types) or through an f16/bf16 intermediate and llama.cpp's quantizer.

    With ``keep`` (a scratch folder) the intermediate is left there for the parity check and returned."""
    if quantization in NUMPY_TYPES:
        result = write_gguf(model_dir, target, quantization, name=name)
        notes += result.fallbacks
        return result, None
    intermediate_type = full_precision_type(model_dir)
    intermediate = (keep / f"same-weights-{intermediate_type}.gguf" if keep is not None else
                    target.with_name(f".{target.stem}.{intermediate_type}.{uuid.uuid4().hex[:8]}.tmp.gguf"))
    try:
        result = write_gguf(model_dir, intermediate, intermediate_type, name=name)
        quantized = quantize_gguf(intermediate, target, quantization)
    finally:
        if keep is None:
            intermediate.unlink(missing_ok=True)
    notes += quantized.fallbacks
    if quantized.fallbacks:
        get_logger().warning("quantization_fallback", tensors=len(quantized.fallbacks),
                             detail="; ".join(quantized.fallbacks[:3]))
    return result, intermediate if keep is not None else None


def export_model(source: str | Path, format: str = "gguf", *, quantization: str = DEFAULT_QUANTIZATION,
                 output: str | Path | None = None, base: str | Path | None = None, overwrite: bool = False,
                 verify: bool = True, ollama: bool = False, ollama_name: str | None = None,
                 system: str | None = None, num_ctx: int | None = None, run: Any = None,
                 trust_remote_code: bool = False) -> ExportResult:
    """Export an adapter or model folder; see the README's "Export" section for every option."""
    with quiet_progress():
        return _export(source, format, quantization, output, base, overwrite, verify, ollama, ollama_name,
                       system, num_ctx, run, trust_remote_code)


def _export(source: str | Path, format: str, quantization: str, output: str | Path | None,
            base: str | Path | None, overwrite: bool, verify: bool, ollama: bool, ollama_name: str | None,
            system: str | None, num_ctx: int | None, run: Any, trust_remote_code: bool) -> ExportResult:
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise BackpropagateError("INPUT_INVALID_VALUE",
                                 f"format={format!r} is invalid: expected one of {', '.join(FORMATS)}.")
    quantization = normalize_quantization(quantization)
    src = resolve_source(source)
    _check_request(src, fmt, ollama, ollama_name)
    if fmt == "merged":
        return _export_merged(src, output, base, overwrite, run, trust_remote_code)
    target = check_output_path(_gguf_target(output, _default_output(src, fmt, quantization)),
                               overwrite=overwrite, what="output file")
    base_target = target.with_name(f"base-{quantization}.gguf") if fmt == "gguf-adapter" else None
    if base_target is not None:
        check_output_path(base_target, overwrite=overwrite, what="base GGUF")
    target.parent.mkdir(parents=True, exist_ok=True)
    if quantization in LLAMA_CPP_TYPES or verify or ollama:

        require_llama_cpp()
    log = get_logger()
    result = ExportResult(format=fmt, path=target, quantization=quantization, base_gguf=base_target)
    with scratch_dir(target.parent, "merged", create=False) as merged_dir, \
            scratch_folder(target.parent, "intermediate") as keep:
        if src.kind == "adapter":
            log.info("export_merging", adapter=str(src.path))
            reference = _merge_scratch(src.path, merged_dir, target, base=base, trust_remote_code=trust_remote_code)
        else:
            reference = src.path
        if fmt == "gguf":
            weights_dir, name = reference, _artifact_name(src.path)
        else:
            weights_dir = local_model_dir(find_base(src, base))
            name = weights_dir.name
        written, full = _write_model_gguf(weights_dir, base_target or target, quantization, name, result.notes,
                                          keep if verify else None)
        if fmt == "gguf-adapter":

            write_adapter_gguf(src.path, weights_dir, target)
        log.info("export_written", path=str(target), quantization=quantization)
        stop_tokens = [written.vocab.tokens[i] for i in written.vocab.stop_ids]
        if verify:
            _verify(result, src.path, reference, weights_dir, full, name)
        _write_sidecars(result, reference, written, stop_tokens, system, num_ctx, run)
    if ollama:
        _register(result, ollama_name or "")
    return result


def _merge_scratch(adapter: Path, folder: Path, target: Path, **kwargs: Any) -> Path:
    """The merged weights a GGUF is written from, in a scratch folder; a failed write names the export's target."""
    try:
        return merge_adapter(adapter, folder, **kwargs)
    except BackpropagateError as err:
        if err.code != "STATE_WRITE_FAILED":
            raise
        raise BackpropagateError("STATE_WRITE_FAILED", f"writing {str(target)!r} failed: {err.message}") from err


def _check_request(src: ExportSource, fmt: str, ollama: bool, ollama_name: str | None) -> None:
    """Refuse what cannot work before anything slow runs."""
    if ollama:

        if fmt == "merged":
            raise BackpropagateError("INPUT_INVALID_VALUE", "--ollama needs a GGUF format, not merged.")
        check_model_name(ollama_name or "")
    if fmt != "merged" and (src.kind == "adapter" or fmt == "gguf-adapter"):

        if src.kind != "adapter":
            raise BackpropagateError("INPUT_NOT_A_MODEL_DIR", f"{src.path} is a full model; gguf-adapter "
                                     "needs a PEFT adapter folder.")
        check_adapter(src.adapter_config or {}, for_gguf_adapter=fmt == "gguf-adapter")


def _verify(result: ExportResult, source: Path, reference: Path, weights_dir: Path, full: Path | None,
            name: str) -> None:
    """The parity check of the written file(s), export_report.json, and the failure mark (see .verify)."""

    adapter = result.format == "gguf-adapter"
    model_file = result.base_gguf if adapter and result.base_gguf is not None else result.path
    report = check_gguf(model_file, reference, result.quantization or "", weights_dir=weights_dir,
                        adapter_path=result.path if adapter else None, full=full, name=name)
    result.report = report
    extra: dict[str, Any] = {"format": result.format, "notes": result.notes, "source": str(source)}
    if adapter:
        extra["base_gguf"] = str(result.base_gguf)
    result.report_path = finish_report(report, result.path, extra, companion=result.base_gguf)


def _write_sidecars(result: ExportResult, model_dir: Path, written: Any, stop_tokens: list[str],
                    system: str | None, num_ctx: int | None, run: Any) -> None:

    model_file = result.path if result.format == "gguf" else result.base_gguf
    assert model_file is not None, "a gguf-adapter export writes its base GGUF before the sidecars"
    adapter_file = result.path if result.format == "gguf-adapter" else None
    config = load_config(model_dir)
    try:
        modelfile = build_modelfile(model_file, model_dir, stop_tokens=stop_tokens,
                                    context_length=int(config.max_position_embeddings),
                                    adapter_path=adapter_file, system=system, num_ctx=num_ctx)
    except BackpropagateError as exc:
        if exc.code != "INPUT_TEMPLATE_UNTRANSLATABLE":
            raise
        result.notes.append(f"{exc.message}; Modelfile not written")
    else:
        result.modelfile = write_modelfile(modelfile, result.path.with_name(MODELFILE_NAME))
        result.modelfile_spec = modelfile
        if modelfile.template_note:  # tool calls / thinking: verified for Ollama, or why not
            result.notes.append(f"Ollama TEMPLATE: {modelfile.template_note}")
    if run is not None:
        write_run_record(result.path.parent, run)


def _register(result: ExportResult, name: str) -> None:

    if result.modelfile is None:

        why = next((n for n in result.notes if n.startswith("no Ollama TEMPLATE")), "")
        raise BackpropagateError("INPUT_TEMPLATE_UNTRANSLATABLE",
                                 f"the model's chat template matches none of the verified Ollama templates "
                                 f"({', '.join(TEMPLATES)}); {result.path} was kept. {why}".strip())
    result.ollama_host = register(name, result.modelfile_spec, result.modelfile)
    result.ollama_model = name


def _export_merged(src: ExportSource, output: str | Path | None, base: str | Path | None, overwrite: bool,
                   run: Any, trust_remote_code: bool) -> ExportResult:
    if src.kind != "adapter":
        raise BackpropagateError("INPUT_INVALID_VALUE", f"{src.path} is already a full model; nothing to merge.")
    target = check_output_path(Path(output) if output is not None else _default_output(src, "merged", ""),
                               overwrite=overwrite, what="output folder")
    path = merge_adapter(src.path, target, base=base, trust_remote_code=trust_remote_code)
    if run is not None:
        write_run_record(path, run)
    return ExportResult(format="merged", path=path)
