"""Peak RSS and throughput of one LoRA training step at a 151k vocabulary and 2048 tokens, on the CPU:
backpropagate with the chunked loss, without it, and TRL's ``SFTTrainer`` on the same model and rows.

The model is a Qwen2 with Qwen's 151,936-word vocabulary and a tiny hidden size (64, 2 layers), so the
logits dominate memory as they do in a real 7B run. Each contender runs in its own subprocess and trains
``--steps`` optimizer steps of one 2048-token row (LoRA r=16 on q_proj,v_proj, fp32, AdamW); the kernel's
peak-RSS counter is reset after the first step and read after the last (``/proc/self/clear_refs``), and
reported over the RSS before the model was loaded. Throughput is timed from the end of step 1 to the end
of the step before the last. During the last step every tensor an operator returns is tracked
(``LiveTensorBytes``): ``logits_mb`` is the bytes of tensors at least 4096 wide (logits, vocabulary
slices of them, their gradients: the body is 64 / 128 wide) alive at the peak of live tensor bytes, ``logits_share`` that over the peak RSS; ``plan_logits_mb`` is the memory plan's figure.

    .venv/bin/python bench/loss_memory.py [--steps 6]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.*: test-only helpers

SEQ, VOCAB = 2048, 151_936


def _status(key: str) -> int:
    from support.memory import proc_status_bytes

    return proc_status_bytes(key)


class StepMarks:
    """Step times, the peak-RSS reset after step 1, and the logits tracker switched on for the last step."""

    def __init__(self, steps: int) -> None:
        from support.memory import LiveTensorBytes

        self.steps, self.times, self.live = steps, {}, LiveTensorBytes(min_width=4096)  # body: 64 / 128

    def step_done(self, step: int) -> None:
        self.times[step] = time.perf_counter()
        if step == 1:
            Path("/proc/self/clear_refs").write_text("5")
        if step == self.steps - 1:
            self.live.__enter__()
        elif step == self.steps:
            self.live.__exit__(None, None, None)

    def result(self, base: int) -> dict[str, Any]:
        peak = _status("VmHWM") - base
        return {"peak_mb": peak / 2**20, "logits_mb": self.live.wide_at_peak / 2**20,
                "logits_share": self.live.wide_at_peak / peak, "live_tensors_mb": self.live.peak / 2**20,
                "tokens_per_s": SEQ * (self.steps - 2) / (self.times[self.steps - 1] - self.times[1])}


def run_ours(model: Path, data: Path, work: Path, steps: int, chunked: bool) -> dict[str, Any]:
    from backpropagate import Trainer, TrainingCallback
    from support.memory import settle_memory

    trainer = Trainer(str(model), chunked_loss=chunked, lora_preset="fast", batch_size=1, gradient_accumulation=1,
                      max_seq_length=SEQ, warmup_ratio=0.0, output_dir=work, save_steps=0, report_to="none")
    plan = trainer.plan(seq_len=SEQ, batch_size=1)
    settle_memory()
    base, marks = _status("VmRSS"), StepMarks(steps)
    trainer.train(str(data), steps=steps, callback=TrainingCallback(on_step=lambda step, loss: marks.step_done(step)))
    return {**marks.result(base), "plan_logits_mb": plan.components["logits"] / 2**20}


def run_trl(model: Path, data: Path, work: Path, steps: int) -> dict[str, Any]:
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model)
    base, marks = _status("VmRSS"), StepMarks(steps)

    class Marks(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks.step_done(state.global_step)

    config = SFTConfig(output_dir=str(work), max_steps=steps, per_device_train_batch_size=1, max_length=SEQ,
                       packing=True, packing_strategy="wrapped", learning_rate=2e-4, save_strategy="no",
                       report_to="none", use_cpu=True, disable_tqdm=True, dataset_text_field="text",
                       logging_steps=steps)
    rows: list[int] = []  # tokens per forward call: the same 2048-token rows as ours
    lm = AutoModelForCausalLM.from_pretrained(model)
    lm.register_forward_pre_hook(lambda mod, args, kw: rows.append(kw["input_ids"].numel()), with_kwargs=True)
    trainer = SFTTrainer(model=lm, args=config, processing_class=tok,
                         train_dataset=load_dataset("json", data_files=str(data))["train"],
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
                         callbacks=[Marks()])
    trainer.train()
    return {**marks.result(base), "plan_logits_mb": None, "row_tokens": sorted(set(rows))}


def child(name: str, work: Path, steps: int) -> None:
    import peft  # noqa: F401  - the libraries belong to the baseline, not to the step
    import transformers  # noqa: F401

    model, data = work / "model", work / "data.jsonl"
    out = work / name
    result = run_trl(model, data, out, steps) if name == "trl" else \
        run_ours(model, data, out, steps, chunked=name == "ours-chunked")
    print(json.dumps({"name": name, **result}), flush=True)


def main() -> None:
    from support.memory import build_wide_vocab_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--child", default=None)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.work), args.steps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_wide_vocab_model(work)
        results = {}
        for name in ("ours-chunked", "ours-plain", "trl"):
            out = subprocess.run([sys.executable, __file__, "--child", name, "--work", str(work),
                                  "--steps", str(args.steps)], capture_output=True, text=True,
                                 env={**os.environ, "BACKPROPAGATE_TRAINING__REPORT_TO": "none"})
            lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
            results[name] = json.loads(lines[-1]) if lines else {"error": out.stderr[-800:]}
    print(json.dumps({**results, "summary": summary(results)}, indent=2))


def summary(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The issue's criteria as ratios: logits at the peak, peak against TRL, throughput against plain."""
    chunked, plain, trl = results["ours-chunked"], results["ours-plain"], results["trl"]
    if any("error" in r for r in results.values()):
        return {}
    return {"logits_mb_plain_over_chunked": plain["logits_mb"] / chunked["logits_mb"],
            "logits_share_plain_over_chunked": plain["logits_share"] / chunked["logits_share"],
            "peak_chunked_over_trl": chunked["peak_mb"] / trl["peak_mb"],
            "tokens_per_s_chunked_over_plain": chunked["tokens_per_s"] / plain["tokens_per_s"]}


if __name__ == "__main__":
    main()
