"""CPU-sized continual-learning benchmark: SLAO against sequential LoRA, its ablations and a joint bound.

A tiny Llama (built locally from a LlamaConfig) is pretrained briefly on a lookup task of its own and
frozen. Then T tasks arrive one after another. Task t owns a block of input tokens and a random map
from them to a label set shared by all tasks; a sequence lists ``pairs`` (x, y) pairs with distinct x,
and only the y tokens are trained and scored. The blocks are disjoint, so one adapter can hold all the
maps at once (the multi-task bound shows it does), but each new task pulls the shared rank-8 LoRA
(attention and MLP projections) towards its own map, so a sequentially trained adapter forgets.

Every method sees the same pretrained base, the same LoRA initialisation, the same data and the same
number of optimizer steps per seed, and seeds are paired across methods:

* ``seqlora``   one LoRA trained task after task, a fresh optimizer each time (merge_mode="none")
* ``slao``      SLAO (arXiv:2512.23017): A_init = orthonormal rows of the previous fine-tuned A (QR),
                B_init = previous fine-tuned B, merged B += 1/sqrt(i) (B_ft - merged B); the MERGED
                adapter is evaluated
* ``slao_noqr`` ablation: A_init = previous fine-tuned A as it is
* ``slao_bmerged`` ablation: B_init = the merged B
* ``slao_inv_i`` ablation: lambda(i) = 1/i
* ``multitask`` upper bound: one LoRA trained on all tasks jointly with the same total steps

    .venv/bin/python bench/continual.py               # full run, 5 seeds
    .venv/bin/python bench/continual.py --quick       # 1-minute smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from backpropagate.continual.forgetting import ForgettingReport, evaluate
from backpropagate.continual.peft_bridge import lora_pairs, set_lora_pairs
from backpropagate.continual.slao import SlaoState, merge_run, next_init, orthonormal_a
from backpropagate.data.templates import IGNORE_INDEX, TokenizedSample
from backpropagate.training.engine import LoopConfig, train_loop

PAD, BOS = 0, 1
LABEL0 = 2  # label tokens are LABEL0 .. LABEL0 + labels - 1; input blocks follow them


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and budgets; every method gets the same ones."""

    tasks: int = 5
    block: int = 16  # input tokens per task
    labels: int = 8  # shared label set
    pairs: int = 8  # (x, y) pairs per sequence, x distinct within a sequence
    train_sequences: int = 256  # per task
    eval_sequences: int = 32  # per task, the held-out slice
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    pretrain_steps: int = 200
    pretrain_lr: float = 3e-3
    steps: int = 60  # per task
    batch_size: int = 32
    lr: float = 3e-3
    rank: int = 8
    alpha: int = 16


QUICK = BenchConfig(tasks=3, train_sequences=96, eval_sequences=16, pretrain_steps=60, steps=25)
METHODS = ("seqlora", "slao", "slao_noqr", "slao_bmerged", "slao_inv_i", "multitask")
LABELS = {"seqlora": "SeqLoRA (merge_mode=none)", "slao": "SLAO", "slao_noqr": "SLAO, no QR (A_init = A)",
          "slao_bmerged": "SLAO, B_init = merged B", "slao_inv_i": "SLAO, lambda = 1/i",
          "multitask": "multi-task (joint) bound"}


@dataclass(frozen=True)
class Task:
    name: str
    train: list[TokenizedSample]
    held_out: list[TokenizedSample]


def vocab_size(cfg: BenchConfig) -> int:
    used = LABEL0 + cfg.labels + (cfg.tasks + 1) * cfg.block  # block 0 is the pretraining task's
    return (used + 63) // 64 * 64


def make_task(index: int, cfg: BenchConfig, gen: torch.Generator) -> Task:
    """Task ``index`` (0 = pretraining): its own input block and a random token -> label map."""
    first = LABEL0 + cfg.labels + index * cfg.block
    labels = torch.randint(0, cfg.labels, (cfg.block,), generator=gen).tolist()

    def sequence() -> TokenizedSample:
        xs = torch.randperm(cfg.block, generator=gen)[:cfg.pairs].tolist()
        ids, targets = [BOS], [IGNORE_INDEX]
        for x in xs:
            ids += [first + x, LABEL0 + labels[x]]
            targets += [IGNORE_INDEX, LABEL0 + labels[x]]
        return TokenizedSample(ids, targets)

    return Task(f"task {index}", [sequence() for _ in range(cfg.train_sequences)],
                [sequence() for _ in range(cfg.eval_sequences)])


def loop_config(cfg: BenchConfig, steps: int, lr: float, seed: int) -> LoopConfig:
    return LoopConfig(steps=steps, batch_size=cfg.batch_size, gradient_accumulation=1, learning_rate=lr,
                      max_seq_length=1 + 2 * cfg.pairs, packing=False, warmup_ratio=0.1,
                      lr_scheduler="cosine", seed=seed)


def pretrained_base(cfg: BenchConfig, seed: int) -> tuple[torch.nn.Module, list[Task]]:
    """A tiny Llama trained (all weights) on task 0, then frozen; and the T continual tasks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    gen = torch.Generator().manual_seed(seed)
    tasks = [make_task(i, cfg, gen) for i in range(cfg.tasks + 1)]
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size(cfg), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                         num_key_value_heads=cfg.heads, max_position_embeddings=64, pad_token_id=PAD,
                         bos_token_id=BOS, eos_token_id=PAD, tie_word_embeddings=True, use_cache=False)
    model = LlamaForCausalLM(config)
    train_loop(model, tasks[0].train, loop_config(cfg, cfg.pretrain_steps, cfg.pretrain_lr, seed),
               pad_token_id=PAD)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tasks[1:]


def with_lora(base: torch.nn.Module, cfg: BenchConfig, seed: int) -> Any:
    """A copy of the frozen base with a fresh LoRA; the same seed gives every method the same init."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                        "down_proj"])
    return get_peft_model(copy.deepcopy(base), config)


def score(model: torch.nn.Module, tasks: list[Task]) -> tuple[list[float], list[float]]:
    results = [evaluate(model, t.held_out, PAD) for t in tasks]
    return [acc for _, acc in results], [loss for loss, _ in results]


def run_sequential(method: str, base: torch.nn.Module, tasks: list[Task], cfg: BenchConfig,
                   seed: int) -> ForgettingReport:
    """Train ``tasks`` one after another with ``method``; score after each run on all tasks so far."""
    model = with_lora(base, cfg, seed)
    state = SlaoState(schedule="1/i" if method == "slao_inv_i" else "1/sqrt(i)")
    report = ForgettingReport(tasks=[t.name for t in tasks], merge_mode=method)
    for i, task in enumerate(tasks):
        if method != "seqlora" and state.runs_merged:
            if method == "slao_noqr":
                init = {n: (a.clone(), b.clone()) for n, (a, b) in state.last_finetuned.items()}
            elif method == "slao_bmerged":
                init = {n: (orthonormal_a(a), state.merged[n][1].clone())
                        for n, (a, _) in state.last_finetuned.items()}
            else:
                init = next_init(state)
            set_lora_pairs(model, init)
        train_loop(model, task.train, loop_config(cfg, cfg.steps, cfg.lr, seed * 100 + i), pad_token_id=PAD)
        if method != "seqlora":
            state = merge_run(state, lora_pairs(model))
            set_lora_pairs(model, state.merged)  # the merged adapter is what gets scored (and deployed)
        report.add_run(*score(model, tasks[:i + 1]))
    return report


def run_multitask(base: torch.nn.Module, tasks: list[Task], cfg: BenchConfig, seed: int) -> dict[str, Any]:
    """One LoRA on the union of all tasks, with the total step budget of a sequential campaign."""
    model = with_lora(base, cfg, seed)
    union = [s for t in tasks for s in t.train]
    train_loop(model, union, loop_config(cfg, cfg.steps * len(tasks), cfg.lr, seed * 100), pad_token_id=PAD)
    accuracy, loss = score(model, tasks)
    return {"accuracy": accuracy, "loss": loss, "aa": sum(accuracy) / len(accuracy)}


def run_seed(seed: int, cfg: BenchConfig, methods: tuple[str, ...] = METHODS) -> dict[str, dict[str, Any]]:
    """Every method on one seed: {method: {"aa", "bwt", "plasticity", "accuracy", "loss", ...}}."""
    torch.manual_seed(seed)
    base, tasks = pretrained_base(cfg, seed)
    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        started = time.perf_counter()
        if method == "multitask":
            results[method] = run_multitask(base, tasks, cfg, seed)
        else:
            results[method] = run_sequential(method, base, tasks, cfg, seed).to_dict()
            results[method].update(results[method].pop("summary")["accuracy"])
        results[method]["seconds"] = time.perf_counter() - started
    return results


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values) * 100:.1f} ± {sd * 100:.1f}"


def markdown(per_seed: list[dict[str, dict[str, Any]]], methods: tuple[str, ...]) -> str:
    """Mean ± sd over seeds (points), and paired differences against SeqLoRA."""
    lines = ["| method | AA | BWT | plasticity | ΔAA vs SeqLoRA | ΔBWT vs SeqLoRA | AA better on |",
             "|---|---|---|---|---|---|---|"]
    for method in methods:
        runs = [r[method] for r in per_seed]
        aa = [r["aa"] for r in runs]
        bwt = [r["bwt"] for r in runs if "bwt" in r]
        plast = [r["plasticity"] for r in runs if "plasticity" in r]
        cells = [LABELS[method], _mean_sd(aa), _mean_sd(bwt) if bwt else "n/a",
                 _mean_sd(plast) if plast else "n/a"]
        if method == "seqlora" or "seqlora" not in methods:
            cells += ["", "", ""]
        else:
            d_aa = [r[method]["aa"] - r["seqlora"]["aa"] for r in per_seed]
            d_bwt = [r[method]["bwt"] - r["seqlora"]["bwt"] for r in per_seed if "bwt" in r[method]]
            wins = sum(d > 0 for d in d_aa)
            cells += [f"{_mean_sd(d_aa)}", _mean_sd(d_bwt) if d_bwt else "n/a", f"{wins}/{len(d_aa)} seeds"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1-minute smoke run (3 tasks, 1 seed).")
    parser.add_argument("--seeds", type=int, default=None, help="number of paired seeds (default 5, quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per task")
    parser.add_argument("--lr", type=float, default=None, help="LoRA learning rate (every method)")
    parser.add_argument("--json", type=Path, default=None, help="write every seed's matrices here")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else BenchConfig()
    if args.steps:
        cfg = replace(cfg, steps=args.steps)
    if args.lr:
        cfg = replace(cfg, lr=args.lr)
    seeds = range(args.seeds or (1 if args.quick else 5))
    started = time.perf_counter()
    per_seed = []
    for seed in seeds:
        per_seed.append(run_seed(seed, cfg))
        line = "  ".join(f"{m} AA {r['aa'] * 100:.1f}" + (f" BWT {r['bwt'] * 100:+.1f}" if "bwt" in r else "")
                         for m, r in per_seed[-1].items())
        print(f"seed {seed}: {line}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    print(markdown(per_seed, METHODS))
    print(f"\n{len(per_seed)} seeds, {cfg.tasks} tasks x {cfg.steps} steps, {elapsed:.0f} s, "
          f"torch {torch.__version__}, {args.threads} threads")
    if args.json:
        args.json.write_text(json.dumps({"config": asdict(cfg), "seeds": per_seed}, indent=1))
    return 0 if all(math.isfinite(r[m]["aa"]) for r in per_seed for m in METHODS) else 1


if __name__ == "__main__":
    sys.exit(main())
