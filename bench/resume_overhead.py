"""What a resumable checkpoint costs: write time and size against the time of one optimizer step.

For each tiny-model size it trains a few real steps (LoRA, packed rows), then writes checkpoints of that
loop state two ways, in the same process, alternating:

- ``backpropagate``: ``training.checkpoints.write_checkpoint`` (safetensors weights, optimizer, schedule,
  RNG, data position, manifest with sha256 of every file, fsync, written as ``.partial`` then renamed);
- ``plain``: what a HF-Trainer-style checkpoint writes (``save_pretrained`` adapter, ``torch.save`` of the
  optimizer, scheduler and RNG states, a JSON trainer state), with no fsync, checksums or rename.

and reads ours back (verify every checksum + load). The figures that matter are the ratios: checkpoint
time / step time (what ``save_steps=1`` would add) and ours / plain.

    .venv/bin/python bench/resume_overhead.py [--sizes tiny small] [--repeats 7] [--lora-r 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def plain_checkpoint(folder: Path, state) -> None:
    import numpy as np
    import torch

    folder.mkdir(parents=True)
    state.model.save_pretrained(folder, safe_serialization=True)
    torch.save(state.optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(state.scheduler.state_dict(), folder / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()},
               folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": state.step,
                                                          "log_history": state.result.loss_history}))


def measure(size: str, repeats: int, lora_r: int, work: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backpropagate.data import load_examples, tokenize_examples
    from backpropagate.demo import quickstart_path
    from backpropagate.testing import build_tiny_model
    from backpropagate.training.checkpoints import load_checkpoint, write_checkpoint
    from backpropagate.training.engine import LoopConfig, LoopHooks, train_loop

    path = build_tiny_model("llama", size=size)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                           LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    samples = tokenize_examples(tokenizer, load_examples(str(quickstart_path())).examples)
    steps = repeats + 2
    cfg = LoopConfig(steps=steps, batch_size=2, gradient_accumulation=2, learning_rate=1e-3, max_seq_length=128)
    marks: list[float] = []
    states = []

    def after(state) -> None:
        marks.append(time.perf_counter())
        states.append(state)

    start = time.perf_counter()
    train_loop(model, samples, cfg, pad_token_id=tokenizer.pad_token_id, hooks=LoopHooks(after_step=after))
    step_times = [b - a for a, b in zip([start, *marks[:-1]], marks, strict=True)][2:]  # skip warm-up steps
    state = states[-1]
    ours, plain, load = [], [], []
    for i in range(repeats):
        t = time.perf_counter()
        saved = write_checkpoint(work / "ours", state, run_id="bench", config={"size": size}, elapsed_seconds=0)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain_checkpoint(work / f"plain-{i}", state)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        load_checkpoint(saved)
        load.append(time.perf_counter() - t)
        state.step += 1  # the next checkpoint is a new folder, as in a run
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"size": size, "trainable_params": trainable, "step_s": statistics.median(step_times),
            "ours_s": statistics.median(ours), "plain_s": statistics.median(plain),
            "load_s": statistics.median(load), "ours_bytes": folder_bytes(saved),
            "plain_bytes": folder_bytes(work / "plain-0")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lora-r", type=int, default=16)
    args = parser.parse_args()
    import torch

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}, torch {torch.__version__}, LoRA r={args.lora_r} all-linear, "
          f"batch 2 x accumulation 2, rows of <= 128 tokens, median of {args.repeats}")
    print("| model | trainable params | step | checkpoint (ours) | size (ours) | checkpoint / step "
          "| plain checkpoint | size (plain) | ours / plain | verify + load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
        try:
            r = measure(size, args.repeats, args.lora_r, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"| {r['size']} | {r['trainable_params']:,} | {r['step_s'] * 1000:.1f} ms "
              f"| {r['ours_s'] * 1000:.1f} ms | {r['ours_bytes'] / 1e6:.2f} MB "
              f"| **{r['ours_s'] / r['step_s']:.2f}x** | {r['plain_s'] * 1000:.1f} ms "
              f"| {r['plain_bytes'] / 1e6:.2f} MB | **{r['ours_s'] / r['plain_s']:.2f}x** "
              f"| {r['load_s'] * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
