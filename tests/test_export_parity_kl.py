"""The parity check's KL divergence and its llama.cpp-quantizer reference, on the tiny self-made models.

A quantized file is judged against llama.cpp's own quantization of the same weights, so a correct file
passes whatever its absolute top-1 agreement, and a writer that gets the numbers slightly wrong fails
even where top-1 agreement cannot see it (the defects below keep 100 % top-1 on the tiny model).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from backpropagate.errors import BackpropagateError
from backpropagate.export import export_model
from backpropagate.export.gguf_writer import write_gguf
from backpropagate.export.kl import kl_stats, paired_margin, position_kl
from backpropagate.export.parity import References, verify_gguf
from backpropagate.export.quantize import KL_TOLERANCE, MAX_KLD_SHARE, quantize_gguf
from backpropagate.export.verify import check_gguf, finish_report
from backpropagate.testing import build_tiny_model
from export_helpers import random_adapter

pytest.importorskip("llama_cpp")

Q8_BLOCK_BYTES = 34  # one f16 scale and 32 int8 values


def _scale_q8_0(path: Path, factor: float, names: set[str] | None = None) -> None:
    """Multiply the block scales of the Q8_0 tensors (all, or ``names``) in place: a writer with wrong scales."""
    import gguf

    reader = gguf.GGUFReader(path, "r+")
    for tensor in reader.tensors:
        if tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0 and (names is None or tensor.name in names):
            blocks = tensor.data.reshape(-1, Q8_BLOCK_BYTES)
            scales = blocks[:, :2].copy().view(np.float16).astype(np.float32) * factor
            blocks[:, :2] = scales.astype(np.float16).view(np.uint8)
    reader.data.flush()


def _swap(path: Path, first: str, second: str) -> None:
    """Exchange the data of two same-shaped tensors in place: a writer that mixed up two names."""
    import gguf

    reader = gguf.GGUFReader(path, "r+")
    a, b = (next(t for t in reader.tensors if t.name == n) for n in (first, second))
    held = a.data.copy()
    a.data[...] = b.data
    b.data[...] = held
    reader.data.flush()


DEFECTS: dict[str, Callable[[Path], None]] = {
    "every scale 2% too large": lambda p: _scale_q8_0(p, 1.02),
    "one tensor's scales 25% too large": lambda p: _scale_q8_0(p, 1.25, {"blk.0.ffn_down.weight"}),
    "gate and up projections swapped": lambda p: _swap(p, "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny llama (hidden 64) and its correct q8_0 GGUF."""
    model = build_tiny_model("llama", size="tiny", seed=0)
    good = tmp_path_factory.mktemp("q8") / "good-q8_0.gguf"
    write_gguf(model, good, "q8_0")
    return model, good


def test_kl_statistics_follow_llama_cpp() -> None:
    """KL(P || Q) per position and its summary, computed as llama.cpp's perplexity tool does."""
    p = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    q = np.log(np.array([[0.9, 0.1], [0.9, 0.1]])) + 7.0  # a constant shift changes no distribution
    kl = position_kl(p, q)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl[0] == pytest.approx(expected) and kl[1] == pytest.approx(0.0, abs=1e-12)
    values = np.linspace(0.0, 1.0, 101)
    same = np.arange(101) % 4 != 0
    stats = kl_stats(values, same)
    assert stats.positions == 101 and stats.mean == pytest.approx(0.5) and stats.maximum == 1.0
    assert stats.uncertainty == pytest.approx(math.sqrt((np.mean(values**2) - 0.25) / 100))
    assert stats.p99 == pytest.approx(0.99) and stats.median == pytest.approx(0.5)
    assert stats.same_top1 == pytest.approx(75 / 101)
    assert stats.same_top1_uncertainty == pytest.approx(math.sqrt(stats.same_top1 * (1 - stats.same_top1) / 100))
    assert kl_stats(values[:5], same[:5]).uncertainty == 0.0  # too few values for statistics, like llama.cpp
    assert paired_margin(values, values) == 0.0


def test_q8_0_is_judged_against_llama_cpps_own_q8_0(tmp_path: Path) -> None:
    result = export_model(build_tiny_model("llama", size="small"), "gguf", quantization="q8_0", output=tmp_path)
    report = result.report
    assert report.passed, report.failures
    full, llama = report.references
    assert full["quantization"] == "f16" and full["agreement"] >= 0.99
    assert llama["role"] == "llama.cpp's quantizer" and llama["quantization"] == "q8_0"
    assert report.kl_limit >= llama["kl"]["mean"] * (1 + KL_TOLERANCE) and report.kl["mean"] <= report.kl_limit
    assert report.threshold < llama["agreement"] and report.agreement >= report.threshold
    assert 0 < report.kl["mean"] < 1e-3 and report.kl["median"] <= report.kl["p99"] <= report.kl["maximum"]
    saved = json.loads(result.report_path.read_text(encoding="utf-8"))
    assert saved["kl"] == report.kl and saved["references"][1]["kl"] == llama["kl"] and saved["rules"]["kl"]
    table = report.table()
    assert "KL divergence" in table and "llama.cpp's quantizer (q8_0)" in table
    assert f"{report.agreement:.2%} ± " in table and "median" in table
    assert not list(tmp_path.glob(".*")), "reference files were left behind"


def test_correct_q8_0_passes(tiny: tuple[Path, Path]) -> None:
    model, good = tiny
    report = check_gguf(good, model, "q8_0")
    assert report.passed, report.failures
    assert report.agreement == 1.0 and report.kl["mean"] < report.kl_limit


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_a_planted_writer_defect_fails_parity(defect: str, tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """Defects invisible to top-1 agreement (still 100 %) fail on KL against llama.cpp's q8_0; the file is
    kept, marked, and the export reports RUNTIME_PARITY_FAILED."""
    model, good = tiny
    broken = tmp_path / "model-q8_0.gguf"
    shutil.copy(good, broken)
    DEFECTS[defect](broken)
    report = check_gguf(broken, model, "q8_0")
    assert not report.passed and any("mean KL divergence" in f for f in report.failures), report.failures
    assert report.kl["mean"] > report.kl_limit
    with pytest.raises(BackpropagateError) as info:
        finish_report(report, broken, {"format": "gguf"})
    assert info.value.code == "RUNTIME_PARITY_FAILED"
    assert (tmp_path / "model-q8_0.parity-failed.gguf").is_file() and not broken.exists()
    saved = json.loads((tmp_path / "export_report.json").read_text(encoding="utf-8"))
    assert saved["passed"] is False and saved["kl"]["mean"] > saved["kl_limit"]


def test_a_broken_conversion_is_not_blamed_on_the_quantization(tmp_path: Path) -> None:
    """The f16 file of the same weights must pass the strict check: a writer fault shared by both files
    (here two swapped tensors in the f16 a K-quant is made from) fails as the conversion's fault."""
    model = build_tiny_model("llama", size="small", seed=0)
    full = tmp_path / "same-weights-f16.gguf"
    write_gguf(model, full, "f16")
    _swap(full, "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight")
    quantized = quantize_gguf(full, tmp_path / "model-q4_k_m.gguf", "q4_k_m").path
    report = check_gguf(quantized, model, "q4_k_m", full=full)
    assert not report.passed and report.threshold is None  # K-quants: top-1 is reported only
    assert any("the conversion, not the quantization" in f for f in report.failures), report.failures
    assert report.references[0]["agreement"] < 0.99


def test_k_quant_of_other_weights_fails_the_sanity_ceiling(tmp_path: Path) -> None:
    """A K-quant has no other file to be compared with (llama.cpp made it); a ceiling on its KL divergence
    still catches a file whose numbers have nothing to do with the model (its final norm negated here)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_tiny_model("llama", size="small", seed=0)
    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.model.norm.weight.mul_(-40.0)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(base).save_pretrained(other)
    good = export_model(base, "gguf", quantization="q4_k_m", output=tmp_path / "good")
    assert good.report.passed and good.report.kl_limit == pytest.approx(MAX_KLD_SHARE * good.report.kl_uniform)
    assert good.report.kl["mean"] < good.report.kl_limit / 10
    report = verify_gguf(good.path, other, "q4_k_m")
    assert not report.passed and report.kl["mean"] > report.kl_uniform * MAX_KLD_SHARE, report.kl


def test_a_reference_llama_cpp_cannot_load_fails(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, good = tiny
    garbage = tmp_path / "llama.cpp-q8_0.gguf"
    garbage.write_bytes(b"GGUF" + b"\0" * 64)
    report = verify_gguf(good, model, "q8_0", references=References(quantized=garbage))
    assert not report.passed and any("could not load llama.cpp-q8_0.gguf" in f for f in report.failures)
    assert report.references[0]["error"]


def test_adapter_gguf_on_a_q8_0_base_is_judged_against_llama_cpps_base(tmp_path: Path) -> None:
    base = build_tiny_model("llama", size="tiny", seed=0)
    adapter = random_adapter(base, tmp_path / "adapter")
    result = export_model(adapter, "gguf-adapter", quantization="q8_0", output=tmp_path / "out")
    report = result.report
    assert report.passed, report.failures
    assert report.adapter == str(result.path) and [r["quantization"] for r in report.references] == ["f16", "q8_0"]
    assert not list((tmp_path / "out").glob(".*"))
