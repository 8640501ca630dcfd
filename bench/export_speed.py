"""Time and peak RSS of the f16 GGUF conversion: streamed (ours) against loading the whole state dict first.

Two models: the hidden-256 tiny Llama (``build_tiny_model("llama", size="small")``) and a generated random
Llama of about 126 M parameters (``support.large.build_random_llama``), both float32.

Each conversion runs in its own fresh process. The child imports torch, transformers (with
``modeling_utils``, which ``AutoConfig`` pulls in on first use), safetensors, gguf and the exporter, loads
nothing, settles (``gc`` + ``malloc_trim``), reads its RSS as the baseline and resets the kernel's peak-RSS
counter (``/proc/self/clear_refs``); after the conversion it reads the peak (``VmHWM``). ``ru_maxrss`` is
not used: a child keeps the forking parent's high-water mark across ``exec``, and import spikes count.
The figure reported is the peak above that baseline, next to the model's total size and its largest tensor:

* ``streamed``: ``export_model(model_dir, "gguf", quantization="f16", verify=False)``, which reads,
  converts and writes one tensor at a time;
* ``naive``: the same metadata and tensor conversion, but the whole state dict is loaded first
  (``safetensors.torch.load_file``) and every converted tensor is handed to ``gguf.GGUFWriter.add_tensor``,
  which keeps them all until ``write_tensors_to_file`` (each source tensor is dropped once converted).

    .venv/bin/python bench/export_speed.py [--runs 3] [--large-layers 12] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.*: test-only helpers

from support.memory import proc_status_bytes, settle_memory  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
METHODS = ("streamed", "naive")






def convert_streamed(model_dir: Path, output: Path) -> None:
    """What ``backprop export MODEL --format gguf --quantization f16 --no-verify`` runs."""
    from backpropagate.export import export_model

    export_model(model_dir, "gguf", quantization="f16", output=output, verify=False)


def convert_naive(model_dir: Path, output: Path) -> None:
    """The same file, written the non-streamed way: whole state dict in memory, then the gguf writer."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from backpropagate.export import gguf_writer as gw
    from backpropagate.export.gguf_arch import add_hparams, arch_spec, extra_tensors, read_hparams
    from backpropagate.export.gguf_families import text_config
    from backpropagate.export.gguf_tokenizer import add_vocab, read_vocab

    config = gw.load_config(model_dir)
    spec = arch_spec(config)
    hp = read_hparams(config, spec)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = read_vocab(model_dir, tokenizer, hp.n_vocab)
    files = gw.safetensors_files(model_dir)
    extra = extra_tensors(hp, config)
    planned = gw.plan_tensors(files, hp, spec, extra, "f16", [])
    state: dict[str, Any] = {}
    for file in sorted(set(files.values())):
        state.update(load_file(file))
    writer = gguf.GGUFWriter(path=output, arch=spec.gguf_arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(gw.model_name(model_dir.name, vocab))
    writer.add_file_type(gw.file_type("f16"))
    add_hparams(writer, spec, hp, config)
    add_vocab(writer, vocab)
    for item in planned:
        data = state.pop(item.hf_name).float().numpy() if item.hf_name is not None else extra[item.gguf_name]
        converted = gw.convert_tensor(item, data, spec, hp, text_config(config))
        assert converted.dtype != np.uint8, "only float output types are handled here"
        writer.add_tensor(item.gguf_name, converted)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def child(method: str, model_dir: Path, output: Path) -> dict[str, Any]:
    """Runs in a fresh process: baseline after imports, then one conversion and its peak RSS."""
    import gguf  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    import transformers.modeling_utils  # noqa: F401 - AutoConfig's first use imports it (~55 MB)
    import transformers.models.auto.tokenization_auto  # noqa: F401

    import backpropagate.export.gguf_writer  # noqa: F401
    import backpropagate.export.ollama  # noqa: F401
    import backpropagate.export.pipeline  # noqa: F401

    settle_memory()
    baseline = proc_status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    started = time.perf_counter()
    (convert_streamed if method == "streamed" else convert_naive)(model_dir, output)
    seconds = time.perf_counter() - started
    return {"method": method, "seconds": seconds, "baseline": baseline, "peak": proc_status_bytes("VmHWM"),
            "out_bytes": output.stat().st_size}


def tensor_sizes(model_dir: Path) -> tuple[int, int, int]:
    """(parameters, bytes on disk of all tensors, bytes of the largest tensor) from the safetensors header."""
    from safetensors import safe_open

    params, total, largest = 0, 0, 0
    with safe_open(model_dir / "model.safetensors", framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensor_slice = handle.get_slice(name)
            n = 1
            for dim in tensor_slice.get_shape():
                n *= dim
            nbytes = n * {"F32": 4, "F16": 2, "BF16": 2}[tensor_slice.get_dtype()]
            params, total, largest = params + n, total + nbytes, max(largest, nbytes)
    return params, total, largest


def run_child(method: str, model_dir: Path, work: Path) -> tuple[dict[str, Any], str]:
    """One conversion in a subprocess; returns its figures and the sha256 of the file it wrote."""
    out_dir = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=work))
    output = out_dir / "model-f16.gguf"
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", method, str(model_dir), str(output)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"{method} on {model_dir} failed:\n{proc.stderr[-3000:]}")
        digest = hashlib.sha256(output.read_bytes()).hexdigest()
        return json.loads(proc.stdout.strip().splitlines()[-1]), digest
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per model and method (median)")
    parser.add_argument("--large-layers", type=int, default=12, help="layers of the generated model")
    parser.add_argument("--json", action="store_true", help="also print every figure as one JSON line")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "MODEL_DIR", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), Path(args.child[2]))))
        return 0

    import torch

    from backpropagate.testing import build_tiny_model
    from support.large import build_random_llama

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}, torch {torch.__version__}, gguf {version('gguf')}, "
          f"f16 output, median of {args.runs} fresh processes per row")
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    rows: list[dict[str, Any]] = []
    identical: list[str] = []
    try:
        models = {"tiny llama, hidden 256": build_tiny_model("llama", size="small"),
                  f"random llama, {args.large_layers} layers": build_random_llama(work / "large",
                                                                                  layers=args.large_layers)}
        print("| model | params | model size (f32) | largest tensor | method | time | peak RSS above baseline "
              "| peak / model size | peak / largest tensor | GGUF size |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label, model_dir in models.items():
            params, total, largest = tensor_sizes(model_dir)
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
            digests: set[str] = set()
            for _ in range(args.runs):
                for method in METHODS:
                    figures, digest = run_child(method, model_dir, work)
                    runs[method].append(figures)
                    digests.add(digest)
            for method in METHODS:
                seconds = statistics.median(r["seconds"] for r in runs[method])
                above = statistics.median(r["peak"] - r["baseline"] for r in runs[method])
                row = {"model": label, "params": params, "model_bytes": total, "largest_tensor_bytes": largest,
                       "method": method, "seconds": seconds, "peak_above_baseline": above,
                       "same_file_as_other_method": len(digests) == 1, "runs": runs[method]}
                rows.append(row)
                print(f"| {label} | {params / 1e6:.1f} M | {mb(total)} | {mb(largest)} | {method} "
                      f"| {seconds:.2f} s | {mb(above)} | {above / total:.2f}x | {above / largest:.1f}x "
                      f"| {mb(runs[method][0]['out_bytes'])} |")
            identical.append(f"{label}: {'yes' if len(digests) == 1 else 'NO'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nboth methods wrote byte-identical files: {'; '.join(identical)}")
    if args.json:
        print(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "child"}, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
