"""Peak RSS and throughput of one LoRA training step at a 151k vocabulary and 2048 tokens, on the CPU:
backpropagate with the chunked loss, without it, and TRL's ``SFTTrainer`` on the same model and rows.

The model is a Qwen2 with Qwen's 151,936-word vocabulary and a tiny hidden size (64, 2 layers), so the
logits dominate memory as they do in a real 7B run. Each contender runs in its own subprocess and trains
``--steps`` optimizer steps of one 2048-token row (LoRA r=16 on q_proj,v_proj, fp32, AdamW); the kernel's
peak-RSS counter is reset after the first step and read after the last (``/proc/self/clear_refs``), and
reported over the RSS before the model was loaded. The "logits" line is the plan's logits component.

    .venv/bin/python bench/loss_memory.py [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SEQ, VOCAB = 2048, 151_936


def build(work: Path) -> tuple[Path, Path]:
    """The model folder (tiny-llama tokenizer: its ids are valid in the larger vocabulary) and the data."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from backpropagate.testing import build_tiny_tokenizer
    from backpropagate.testing.corpus import corpus

    tok = build_tiny_tokenizer("llama")
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    lines = corpus()
    rows = [{"text": " ".join(lines[(i + j) % len(lines)] for j in range(60))} for i in range(40)]
    (work / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return work / "model", work / "data.jsonl"


def _status(key: str) -> int:
    from backpropagate.testing.memory import proc_status_bytes

    return proc_status_bytes(key)


def run_ours(model: Path, data: Path, work: Path, steps: int, chunked: bool) -> dict[str, Any]:
    from backpropagate import Trainer, TrainingCallback
    from backpropagate.testing.memory import settle_memory

    trainer = Trainer(str(model), chunked_loss=chunked, lora_preset="fast", batch_size=1, gradient_accumulation=1,
                      max_seq_length=SEQ, warmup_ratio=0.0, output_dir=work, save_steps=0, report_to="none")
    plan = trainer.plan(seq_len=SEQ, batch_size=1)
    settle_memory()
    base, marks = _status("VmRSS"), {}

    def on_step(step: int, loss: float) -> None:
        marks[step] = time.perf_counter()
        if step == 1:
            Path("/proc/self/clear_refs").write_text("5")

    trainer.train(str(data), steps=steps, callback=TrainingCallback(on_step=on_step))
    seconds = marks[steps] - marks[1]
    return {"peak_mb": (_status("VmHWM") - base) / 2**20, "logits_mb": plan.components["logits"] / 2**20,
            "tokens_per_s": SEQ * (steps - 1) / seconds}


def run_trl(model: Path, data: Path, work: Path, steps: int) -> dict[str, Any]:
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model)
    base = _status("VmRSS")
    marks: dict[int, float] = {}

    class Marks(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks[state.global_step] = time.perf_counter()
            if state.global_step == 1:
                Path("/proc/self/clear_refs").write_text("5")

    config = SFTConfig(output_dir=str(work), max_steps=steps, per_device_train_batch_size=1, max_length=SEQ,
                       packing=True, learning_rate=2e-4, save_strategy="no", report_to="none", use_cpu=True,
                       disable_tqdm=True, dataset_text_field="text", logging_steps=steps)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=config, processing_class=tok,
                         train_dataset=load_dataset("json", data_files=str(data))["train"],
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
                         callbacks=[Marks()])
    trainer.train()
    return {"peak_mb": (_status("VmHWM") - base) / 2**20, "logits_mb": None,
            "tokens_per_s": SEQ * (steps - 1) / (marks[steps] - marks[1])}


def child(name: str, work: Path, steps: int) -> None:
    import peft  # noqa: F401  - the libraries belong to the baseline, not to the step
    import transformers  # noqa: F401

    model, data = work / "model", work / "data.jsonl"
    out = work / name
    result = run_trl(model, data, out, steps) if name == "trl" else \
        run_ours(model, data, out, steps, chunked=name == "ours-chunked")
    print(json.dumps({"name": name, **result}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", default=None)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.work), args.steps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work)
        results = {}
        for name in ("ours-chunked", "ours-plain", "trl"):
            out = subprocess.run([sys.executable, __file__, "--child", name, "--work", str(work),
                                  "--steps", str(args.steps)], capture_output=True, text=True,
                                 env={**os.environ, "BACKPROPAGATE_TRAINING__REPORT_TO": "none"})
            lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
            results[name] = json.loads(lines[-1]) if lines else {"error": out.stderr[-800:]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
