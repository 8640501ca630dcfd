"""A tiny Qwen3 with the real Qwen3 tokenizer and template trains on glaive's tool-call sample plus reasoning
rows, exports an f16 GGUF whose llama.cpp tokenizes a rendered tool conversation like transformers, and gets
an Ollama TEMPLATE verified on tool conversations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backpropagate.data.formats import detect_format, to_examples
from backpropagate.data.rowset import normalized_row
from support.assets import AssetUnavailable

pytestmark = pytest.mark.slow

REASONING = [{"messages": [{"role": "user", "content": f"What is {a} times {b}?"},
                           {"role": "assistant", "reasoning_content": f"{a} * {b} = {a * b}.",
                            "content": f"{a * b}."}]} for a, b in ((3, 4), (6, 7), (8, 9), (12, 5))]


@pytest.fixture(scope="module")
def qwen3_model() -> Path:
    from support.real_families import build_real_family_model

    try:
        return build_real_family_model("qwen3")
    except AssetUnavailable as exc:
        pytest.skip(str(exc))


def test_tool_and_reasoning_rows_train_and_ship_in_the_models_format(qwen3_model: Path, shared_datasets: Path,
                                                                     tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from backpropagate import Trainer
    from backpropagate.export.ollama_templates import render_ollama
    from backpropagate.export.parity import TOOL_CONVERSATION

    glaive = json.loads((shared_datasets / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))[:6]
    rows = [normalized_row(e) for e in to_examples(glaive, detect_format(glaive))] + REASONING
    data = tmp_path / "agentic.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    trainer = Trainer(str(qwen3_model), lora_r=4, lora_alpha=8, batch_size=1, gradient_accumulation=1,
                      max_seq_length=1024, warmup_ratio=0.0, output_dir=tmp_path / "out", seed=0, report_to="none")
    shown = trainer.preview(str(data), row=1)
    trained = [text for text, flag in shown.segments if flag]
    assert any(part.startswith("<tool_call>\n{\"name\": \"") for part in trained), trained
    run = trainer.train(str(data), steps=3)
    assert run.steps == 3 and all(0 < loss < 100 for loss in run.loss_history)

    result = trainer.export("gguf", quantization="f16", output=tmp_path / "gguf")
    report = result.report
    assert report.passed, report.failures
    tool_tokens = [t for t in report.tokenization if t["prompt"] == "tools"]
    assert tool_tokens and tool_tokens[0]["match"] and tool_tokens[0]["tokens"] > 50
    assert any(t["tools"] and t["match"] for t in report.chat_template)

    spec = result.modelfile_spec
    assert spec is not None and "tool calls" in spec.template_note.lower(), spec
    tokenizer = AutoTokenizer.from_pretrained(qwen3_model)
    messages = list(TOOL_CONVERSATION.messages)  # ends with a user turn: the generation prompt is compared too
    tools = list(TOOL_CONVERSATION.tools or [])
    expected = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert render_ollama(spec.template, messages, tools) == expected
