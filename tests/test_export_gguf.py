"""GGUF export on real tiny models of every family: trained adapter -> GGUF -> llama.cpp behaves like PyTorch.

Each family's adapter is trained once (tiny size: f16 and q8_0 with the parity thresholds; hidden-256
"small" size: the K-quants, whose rows are multiples of 256). The parity check itself runs llama.cpp
through llama-cpp-python; the tests add multi-turn conversations of their own and check the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backpropagate.export import export_model
from backpropagate.export.quantize import MAX_KLD_SHARE, tensor_types
from backpropagate.testing import FAMILIES, build_tiny_model
from export_helpers import random_adapter, trained_adapter

pytest.importorskip("llama_cpp")

GOLDEN = Path(__file__).parent / "export_golden"
MULTI_TURN = [
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "What is the capital of Japan?"},
     {"role": "assistant", "content": "The capital of Japan is Tokyo."},
     {"role": "user", "content": "And of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."},
     {"role": "user", "content": "Thanks! How do I reverse a list in Python?"}],
    [{"role": "user", "content": "Hello! How can I help you today?"},
     {"role": "assistant", "content": "Hi there, I have a question about my order."},
     {"role": "user", "content": "Sure, what is it?\n\nPlease include the number."}],
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-gguf")


def _check_report(result, threshold: float | None) -> dict:
    report = result.report
    assert report.passed, report.failures
    tools = any(t["prompt"] == "tools" for t in report.tokenization)  # templates that write tool calls
    assert all(t["match"] for t in report.tokenization) and len(report.tokenization) == 6 + tools
    assert all(t["match"] for t in report.chat_template) and len(report.chat_template) == 3 + tools
    assert report.stop_tokens and all(report.stop_tokens.values()) and report.eos_matches
    assert report.positions > 150 and report.max_logit_diff >= 0.0
    if threshold is not None:
        assert report.threshold == threshold and report.agreement >= threshold
    if report.threshold is not None:  # q8_0: set from llama.cpp's own q8_0 of the same weights
        assert report.agreement >= report.threshold
    assert report.kl["positions"] == report.positions and report.kl["mean"] >= 0.0
    if report.kl_limit is not None:
        assert report.kl["mean"] <= report.kl_limit
    text = report.generation["text"]
    assert text["gguf_tokens"], "llama.cpp generated nothing"
    saved = json.loads(result.report_path.read_text(encoding="utf-8"))
    assert saved["passed"] and saved["agreement"] == report.agreement and "max_logit_diff" in saved
    assert saved["kl"] == report.kl and saved["kl_limit"] == report.kl_limit
    return saved


def _multi_turn_agrees(gguf: Path, model_dir: Path) -> None:
    """Token ids and chat-template renders of longer conversations agree between HF and llama.cpp."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    llm = llama_cpp.Llama(str(gguf), n_ctx=512, verbose=False, n_threads=1)
    try:
        eos = llm.detokenize([llm.token_eos()], special=True).decode()
        bos = llm.detokenize([llm.token_bos()], special=True).decode() if llm.token_bos() >= 0 else ""
        template = llm.metadata["tokenizer.chat_template"]
        for messages in MULTI_TURN:
            for generation, turns in ((True, messages), (False, messages[:-1])):
                hf_text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation)
                gguf_text = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                                add_generation_prompt=generation)(messages=turns).prompt
                assert gguf_text == hf_text
                assert llm.tokenize(hf_text.encode(), add_bos=False, special=True) == tokenizer(
                    hf_text, add_special_tokens=False)["input_ids"]
    finally:
        llm.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_adapter_to_f16_and_q8_0(family: str, root: Path) -> None:
    adapter = trained_adapter(family, "tiny", str(root))
    out = root / f"{family}-tiny"
    f16 = export_model(adapter, "gguf", quantization="f16", output=out)
    saved = _check_report(f16, 0.99)
    assert f16.report.generation["text"]["match"]  # f16 decodes exactly like PyTorch
    assert saved["source"] == str(adapter) and f16.path == out / "model-f16.gguf"
    golden = (GOLDEN / f"{family}.Modelfile").read_text(encoding="utf-8")
    assert f16.modelfile.read_text(encoding="utf-8") == golden.replace("/models/model.gguf", str(f16.path))
    q8 = export_model(adapter, "gguf", quantization="q8_0", output=out)
    _check_report(q8, None)  # judged against llama.cpp's q8_0 and the f16 of the same weights
    assert [(r["quantization"], r["role"]) for r in q8.report.references] == [
        ("f16", "same weights unquantized"), ("q8_0", "llama.cpp's quantizer")]
    assert q8.report.references[0]["agreement"] >= 0.99 and q8.report.kl_limit is not None
    assert {t for _, t, shape in tensor_types(q8.path) if len(shape) == 2} == {"Q8_0"}
    assert q8.path.stat().st_size < f16.path.stat().st_size
    assert not list(out.glob(".*")), "temporary files were left behind"
    merged = export_model(adapter, "merged", output=root / f"{family}-merged")
    _multi_turn_agrees(f16.path, merged.path)


@pytest.mark.parametrize("family", FAMILIES)
def test_k_quants_on_the_hidden_256_size(family: str, root: Path) -> None:
    adapter = trained_adapter(family, "small", str(root), steps=6, learning_rate=3e-3)
    merged = export_model(adapter, "merged", output=root / f"{family}-small-merged").path
    for quantization, main_type in (("q4_k_m", "Q4_K"), ("q5_k_m", "Q5_K"), ("q6_k", "Q6_K")):
        result = export_model(merged, "gguf", quantization=quantization, output=root / f"{family}-small")
        _check_report(result, None)
        assert result.report.threshold is None and 0.5 < result.report.agreement <= 1.0
        # K-quants: a sanity ceiling on the KL, a share of what a uniform guess loses
        assert result.report.kl_limit == pytest.approx(MAX_KLD_SHARE * result.report.kl_uniform)
        assert result.report.references[0]["agreement"] >= 0.99  # and the f16 they came from is exact
        # every row of the hidden-256 size fits a 256-wide super-block: no fallback type noted
        assert [n for n in result.notes if not n.startswith("Ollama TEMPLATE:")] == []
        types = {t for _, t, shape in tensor_types(result.path) if len(shape) == 2}
        assert main_type in types and types <= {"Q4_K", "Q5_K", "Q6_K"}


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])  # permuted q/k, q/k/v biases, fused qkv
def test_adapter_gguf_on_base_gguf_matches_merged(family: str, root: Path) -> None:
    adapter = trained_adapter(family, "tiny", str(root))
    result = export_model(adapter, "gguf-adapter", quantization="f16", output=root / f"{family}-adapter")
    _check_report(result, 0.99)
    assert result.report.adapter == str(result.path) and result.base_gguf.name == "base-f16.gguf"
    assert result.report.generation["text"]["match"]
    _adapter_file_is_lora(result.path)


def _adapter_file_is_lora(path: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(path)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    names = [t.name for t in reader.tensors]
    assert names and all(n.endswith((".lora_a", ".lora_b")) for n in names)


def test_rslora_and_rank_patterns_are_scaled_exactly(tmp_path: Path) -> None:
    """PEFT's per-module scale (rsLoRA, rank/alpha patterns) is folded into lora_b, so base+adapter
    in llama.cpp equals the merged model (here an untrained random adapter on the tiny llama)."""
    base = build_tiny_model("llama")
    adapter = random_adapter(base, tmp_path / "rs", use_rslora=True, rank_pattern={"q_proj": 4},
                             alpha_pattern={"down_proj": 4})
    result = export_model(adapter, "gguf-adapter", quantization="f32", output=tmp_path / "out")
    # f32 on both sides: the logits agree to float rounding; a near-tie may still flip one top-1 of ~300.
    assert result.report.passed and result.report.agreement >= 0.99 and result.report.max_logit_diff < 1e-3


def test_f32_writer_reproduces_pytorch_logits(tmp_path: Path) -> None:
    result = export_model(build_tiny_model("qwen3"), "gguf", quantization="f32", output=tmp_path / "q3.gguf")
    assert result.path == tmp_path / "q3.gguf" and result.report.agreement == 1.0
    assert result.report.max_logit_diff < 1e-3
    assert {t for _, t, _ in tensor_types(result.path)} == {"F32"}


def test_bf16_of_a_well_trained_model_meets_99_percent(root: Path) -> None:
    adapter = trained_adapter("llama", "tiny", str(root))
    result = export_model(adapter, "gguf", quantization="bf16", output=root / "llama-bf16")
    _check_report(result, 0.99)
    assert "BF16" in {t for _, t, _ in tensor_types(result.path)}


def test_k_quant_fallback_on_narrow_rows_is_reported(tmp_path: Path) -> None:
    """The hidden-64 tiny model's rows cannot take 256-wide K-quant blocks: llama.cpp falls back, we say so."""
    result = export_model(build_tiny_model("mistral"), "gguf", quantization="q4_k_m", output=tmp_path)
    assert result.report.passed and result.notes
    assert all("not a multiple of 256" in note for note in result.notes)
    fallback_types = {t for _, t, shape in tensor_types(result.path) if len(shape) == 2}
    assert "Q4_K" not in fallback_types and fallback_types <= {"Q5_0", "Q8_0", "Q6_K"}
    saved = json.loads(result.report_path.read_text(encoding="utf-8"))
    assert saved["notes"] == result.notes


def test_export_is_deterministic(tmp_path: Path) -> None:
    model = build_tiny_model("smollm3")
    a = export_model(model, "gguf", quantization="q8_0", output=tmp_path / "a.gguf", verify=False)
    b = export_model(model, "gguf", quantization="q8_0", output=tmp_path / "b.gguf", verify=False)
    assert a.path.read_bytes() == b.path.read_bytes()


def test_q_and_k_rows_are_interleaved_for_llama_rope() -> None:
    from backpropagate.export.gguf_arch import interleave_rotary_rows

    rows = np.arange(8)[:, None].repeat(2, 1)  # one head of dim 8: halves [0..3] and [4..7]
    assert interleave_rotary_rows(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
