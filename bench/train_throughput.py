"""Training throughput: backpropagate's defaults against TRL and the plain transformers Trainer.

Every contender trains the same tiny llama (hidden 256, 4 layers) with the same LoRA (r=16, alpha=32,
dropout 0.05, all-linear), learning rate 2e-4, cosine schedule with 3 % warmup, AdamW, fp32, for the same
number of optimizer steps with the same gradient accumulation, on the same conversations: the alpaca
rows rendered with the model's chat template by backpropagate's tokenizer and labelled on the assistant
turn only (the peers get those very ids and masks, so any difference is the batching, not the data).

- ``backpropagate``: ``Trainer`` defaults (padding-free packing into ``max_seq_length`` rows, the CPU batch);
- ``trl``: ``SFTTrainer``, ``packing=False``, ``completion_only_loss`` via a ``completion_mask`` column;
- ``trl-packed``: the same with ``packing=True`` (TRL's default "bfd" strategy, padding-free);
- ``hf-trainer``: ``transformers.Trainer`` + ``DataCollatorForSeq2Seq`` (pad to the longest in the batch).

Unpacked peers take ``round(batch_size x samples per packed row)`` rows per micro-batch, so a step holds
about as many tokens as ours. The clock runs from the first forward pass to the end of the last optimizer
step (model load, tokenization and dataset preparation are outside it). Each contender runs in its own
subprocess, so peak RSS is its own. Removing padding can at best speed a peer up by 1/(1 - p), p being
the share of the positions fed to its model that are padding.

    .venv/bin/python bench/train_throughput.py [--steps 30] [--rows 1000] [--heldout 50] [--repeats 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "alpaca_en_demo.json"
CONTENDERS = ("backpropagate", "trl", "trl-packed", "hf-trainer")
PEERS = {"trl": "(a) TRL packing=False", "trl-packed": "(b) TRL packing=True",
         "hf-trainer": "(c) HF Trainer + Seq2Seq padding"}
TARGETS = {"trl": "limit", "trl-packed": "parity", "hf-trainer": "limit"}  # from the issue
MAX_LEN = 512
SEED = 0
LR = 2e-4
WARMUP_RATIO = 0.03
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.05, "target_modules": "all-linear"}
OUR_PADDING_TARGET = 0.02
BUSY_LOAD = 0.2  # cores' worth of CPU used by other processes during a run that makes it "contended"


@dataclass
class Prepared:
    """What every contender starts from: the model folder and the tokenized train / held-out rows."""

    model_path: Path
    tokenizer: Any
    raw_train: list[dict[str, Any]]
    train: list[Any]  # TokenizedSample, truncated to MAX_LEN
    heldout: list[Any]
    batch_size: int  # our CPU default: rows per micro-batch
    accumulation: int
    peer_batch: int  # rows per micro-batch for the unpacked peers


class Meter:
    """Counts what is really fed to the model (a forward pre-hook) and times first forward -> last step."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.active = True
        self.start: float | None = None
        self.end: float | None = None
        self.positions = self.padding = self.labels = 0

    def attach(self, model: Any) -> None:
        model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)

    def _pre_forward(self, _module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        if not self.active:
            return
        if self.start is None:
            self.start = time.perf_counter()
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.positions += ids.numel()
        self.padding += int((ids == self.pad_id).sum())
        labels = kwargs.get("labels")
        if labels is not None:  # HF models shift labels by one: position 0 is never a target
            self.labels += int((labels[..., 1:] != -100).sum())

    def step_done(self) -> None:
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.end or 0.0) - (self.start or 0.0)


def prepare(rows: int, heldout: int) -> Prepared:
    """Tokenize with backpropagate's chat-template renderer; the rows after the train rows are held out."""
    from transformers import AutoTokenizer

    from backpropagate import Trainer
    from backpropagate.data import load_examples, pack, tokenize_examples
    from backpropagate.data.packing import truncate
    from backpropagate.testing import build_tiny_model

    model_path = build_tiny_model("llama", size="small")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    raw = json.loads(DATA.read_text(encoding="utf-8"))
    n_train = min(rows, len(raw) - heldout)  # the file has 999 rows: keep `heldout` of them unseen
    examples = load_examples(DATA).examples
    samples = [truncate(s, MAX_LEN) for s in tokenize_examples(tokenizer, examples)]
    assert not any(tokenizer.pad_token_id in s.input_ids for s in samples), "pad id inside the data"
    train = samples[:n_train]
    defaults = Trainer(str(model_path), seed=SEED).smart_defaults()
    per_row = len(train) / len(pack(train, MAX_LEN, seed=SEED).rows)
    return Prepared(model_path, tokenizer, raw[:n_train], train, samples[n_train:n_train + heldout],
                    defaults.batch_size, defaults.gradient_accumulation,
                    max(1, round(defaults.batch_size * per_row)))


def heldout_loss(model: Any, samples: list[Any]) -> float:
    """Mean NLL per assistant token, one unpadded row at a time, identical for every contender."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            logits = model(input_ids=torch.tensor([s.input_ids]), use_cache=False).logits[0, :-1].float()
            targets = torch.tensor(s.labels[1:])
            total += float(torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    return total / count


def run_ours(prep: Prepared, steps: int, work: Path) -> dict[str, Any]:
    from backpropagate import Trainer
    from backpropagate.training.callbacks import TrainingCallback

    data = work / "train.json"
    data.write_text(json.dumps(prep.raw_train), encoding="utf-8")
    # no experiment trackers, as for the peers (report_to="none"), where this version has them
    quiet = {"report_to": "none"} if "report_to" in inspect.signature(Trainer).parameters else {}
    trainer = Trainer(str(prep.model_path), output_dir=work / "out", max_seq_length=MAX_LEN, seed=SEED,
                      save_steps=0, lora_r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], learning_rate=LR, warmup_ratio=WARMUP_RATIO,
                      **quiet)
    trainer.load()  # load before train() so the meter can hook the model
    untrained = heldout_loss(trainer.model, prep.heldout)
    meter = Meter(prep.tokenizer.pad_token_id)
    meter.attach(trainer.model)
    run = trainer.train(str(data), steps=steps, callback=TrainingCallback(on_step=lambda *_: meter.step_done()))
    meter.active = False
    meter.labels = run.tokens_trained  # targets are not passed to the model here; the loop counts them
    setup = f"{prep.batch_size} packed rows x {prep.accumulation}"
    mean_loss = sum(run.loss_history) / len(run.loss_history)  # as HF's training_loss: mean over steps
    return finish(meter, trainer.model, prep, setup, mean_loss, untrained)


def peer_model(prep: Prepared, wrap: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(prep.model_path, dtype=torch.float32)
    model.config.use_cache = False
    if not wrap:
        return model
    from peft import get_peft_model

    torch.manual_seed(SEED)
    return get_peft_model(model, lora_config())


def lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], bias="none", task_type="CAUSAL_LM")


def common_args(prep: Prepared, steps: int, batch: int, work: Path) -> dict[str, Any]:
    """TrainingArguments shared by the peers, matching backpropagate's loop settings."""
    return dict(output_dir=str(work / "out"), max_steps=steps, per_device_train_batch_size=batch,
                gradient_accumulation_steps=prep.accumulation, learning_rate=LR, lr_scheduler_type="cosine",
                warmup_steps=math.ceil(WARMUP_RATIO * steps), weight_decay=0.0, max_grad_norm=1.0,
                optim="adamw_torch", seed=SEED, data_seed=SEED, logging_steps=steps, save_strategy="no",
                report_to="none", disable_tqdm=True, use_cpu=True, bf16=False, fp16=False,
                gradient_checkpointing=False, dataloader_num_workers=0)


def step_callback(meter: Meter) -> Any:
    from transformers import TrainerCallback

    class _Steps(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            meter.step_done()

    return _Steps()


def run_trl(prep: Prepared, steps: int, work: Path, packing: bool) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    batch = prep.batch_size if packing else prep.peer_batch
    data = Dataset.from_dict({"input_ids": [s.input_ids for s in prep.train],
                              "completion_mask": [[int(x != -100) for x in s.labels] for s in prep.train]})
    config = SFTConfig(**common_args(prep, steps, batch, work), max_length=MAX_LEN, packing=packing,
                       completion_only_loss=True)
    trainer = SFTTrainer(model=peer_model(prep, wrap=False), args=config, train_dataset=data,
                         processing_class=prep.tokenizer, peft_config=lora_config())
    untrained = heldout_loss(trainer.model, prep.heldout)  # every contender warms up the same way
    meter = Meter(prep.tokenizer.pad_token_id)
    meter.attach(trainer.model)
    trainer.add_callback(step_callback(meter))
    result = trainer.train()
    meter.active = False
    setup = f"{batch} packed rows x {prep.accumulation} (bfd, padding-free)" if packing else \
        f"{batch} rows x {prep.accumulation}"
    return finish(meter, trainer.model, prep, setup, result.training_loss, untrained)


def run_hf(prep: Prepared, steps: int, work: Path) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    data = Dataset.from_dict({"input_ids": [s.input_ids for s in prep.train],
                              "attention_mask": [[1] * len(s.input_ids) for s in prep.train],
                              "labels": [s.labels for s in prep.train]})
    model = peer_model(prep, wrap=True)
    untrained = heldout_loss(model, prep.heldout)
    meter = Meter(prep.tokenizer.pad_token_id)
    meter.attach(model)
    trainer = Trainer(model=model, args=TrainingArguments(**common_args(prep, steps, prep.peer_batch, work)),
                      train_dataset=data, callbacks=[step_callback(meter)],
                      data_collator=DataCollatorForSeq2Seq(prep.tokenizer, padding=True, label_pad_token_id=-100))
    result = trainer.train()
    meter.active = False
    return finish(meter, model, prep, f"{prep.peer_batch} rows x {prep.accumulation}", result.training_loss,
                  untrained)


def finish(meter: Meter, model: Any, prep: Prepared, setup: str, train_loss: float,
           untrained: float) -> dict[str, Any]:
    steps_seconds = meter.seconds
    return {"setup": setup, "seconds": steps_seconds, "label_tokens": meter.labels,
            "positions": meter.positions, "padding": meter.padding,
            "tokens_per_second": meter.labels / steps_seconds if steps_seconds > 0 else 0.0,
            "padding_fraction": meter.padding / meter.positions if meter.positions else 0.0,
            "train_loss": float(train_loss), "heldout_loss": heldout_loss(model, prep.heldout),
            "untrained_heldout_loss": untrained,
            # ru_maxrss is KiB on Linux; the whole subprocess, load and evaluation included
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(name: str, steps: int, rows: int, heldout: int) -> dict[str, Any]:
    import torch

    torch.manual_seed(SEED)
    prep = prepare(rows, heldout)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        work = Path(tmp)
        if name == "backpropagate":
            out = run_ours(prep, steps, work)
        elif name in ("trl", "trl-packed"):
            out = run_trl(prep, steps, work, packing=name == "trl-packed")
        else:
            out = run_hf(prep, steps, work)
    out.update(name=name, steps=steps, train_rows=len(prep.train), heldout_rows=len(prep.heldout),
               threads=torch.get_num_threads())
    return out


def need_trl() -> None:
    if importlib.util.find_spec("trl") is None:
        sys.exit("bench/train_throughput.py needs TRL for its peers: pip install -e '.[bench]'")


def table(results: dict[str, dict[str, Any]]) -> str:
    """The side-by-side markdown table and the verdict on each target of the issue."""
    ours = results["backpropagate"]
    lines = ["| contender | batches | label tok/step | trained tok/s | ours / this | padding p | "
             "limit 1/(1-p) | peak RSS | held-out loss | other load |", "|---" * 10 + "|"]
    verdicts = []
    for name, r in results.items():
        p = r["padding_fraction"]
        limit = 1 / (1 - p) if p < 1 else math.inf
        ratio = ours["tokens_per_second"] / r["tokens_per_second"] if r["tokens_per_second"] else math.nan
        label = PEERS.get(name, "backpropagate defaults")
        lines.append(f"| {label} | {r['setup']} | {r['label_tokens'] / r['steps']:.0f} | "
                     f"{r['tokens_per_second']:.0f} | {'-' if name == 'backpropagate' else f'{ratio:.2f}x'} | "
                     f"{100 * p:.1f} % | {limit:.2f}x | {r['peak_rss_mib']:.0f} MiB | {r['heldout_loss']:.3f} | "
                     f"{'?' if r.get('other_load') is None else format(r['other_load'], '.2f')} |")
        if name in TARGETS:
            goal = 0.9 * limit if TARGETS[name] == "limit" else 1.0
            what = "0.9 x limit" if TARGETS[name] == "limit" else "1.0x"
            verdicts.append(f"- vs {label}: {ratio:.2f}x, target >= {what} = {goal:.2f}x: "
                            f"**{'met' if ratio >= goal else 'missed'}**")
    p = ours["padding_fraction"]
    verdicts.append(f"- our padding: {100 * p:.2f} %, target <= {100 * OUR_PADDING_TARGET:.0f} %: "
                    f"**{'met' if p <= OUR_PADDING_TARGET else 'missed'}**")
    before = ", ".join(f"{r['untrained_heldout_loss']:.3f}" for r in results.values())
    return "\n".join(lines) + "\n\n" + "\n".join(verdicts) + f"\n\nHeld-out loss before training: {before}."


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process of the machine has used so far (Linux /proc/stat), or None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One contender in a fresh subprocess; also measures the CPU other processes used meanwhile."""
    cmd = [sys.executable, __file__, "--contender", name, "--json", "--steps", str(args.steps),
           "--rows", str(args.rows), "--heldout", str(args.heldout)]
    wait_until_quiet(args.wait_quiet)
    print(f"running {name} ...", file=sys.stderr, flush=True)
    started, cpu0, mine0 = time.perf_counter(), busy_cpu_seconds(), children_cpu_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        sys.exit(f"contender {name} failed (exit {proc.returncode})")
    wall, after = time.perf_counter() - started, busy_cpu_seconds()
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # cores' worth of CPU that other processes took during the run: with 2 cores, anything much above 0
    # slows torch's threads down a lot, so such runs are retried (--retries)
    r["other_load"] = None if cpu0 is None or after is None else max(
        0.0, (after - cpu0 - (children_cpu_seconds() - mine0)) / wall)
    load = "?" if r["other_load"] is None else f"{r['other_load']:.2f}"
    print(f"  {r['tokens_per_second']:.0f} trained tok/s, padding {100 * r['padding_fraction']:.1f} %, "
          f"{r['seconds']:.1f} s of steps, {wall:.0f} s in all, other processes' load {load} cores",
          file=sys.stderr)
    return r


def wait_until_quiet(timeout: float) -> None:
    """Start a run only once other processes leave the CPUs alone (a contended run is wasted time)."""
    deadline = time.monotonic() + timeout
    while True:
        before = busy_cpu_seconds()
        time.sleep(5.0)
        after = busy_cpu_seconds()
        if before is None or after is None or (after - before) / 5.0 <= BUSY_LOAD:
            return
        if time.monotonic() > deadline:
            print("  the machine is still busy; running anyway", file=sys.stderr)
            return
        print(f"  waiting: other processes use {(after - before) / 5.0:.2f} cores", file=sys.stderr, flush=True)
        time.sleep(25.0)


def busy(r: dict[str, Any]) -> bool:
    return r["other_load"] is not None and r["other_load"] > BUSY_LOAD


def parent(args: argparse.Namespace) -> None:
    """Run the contenders round-robin ``--repeats`` times; keep each one's fastest run (noisy machines)."""
    need_trl()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.contenders}
    for _ in range(args.repeats):
        for name in args.contenders:
            runs[name].append(run_child(name, args))
            for _ in range(args.retries):
                if not busy(runs[name][-1]):
                    break
                print(f"  other processes were busy (> {BUSY_LOAD} cores): running {name} again",
                      file=sys.stderr)
                runs[name].append(run_child(name, args))
    # the fastest run of each contender, among the uncontended ones when there are any
    results = {name: max([r for r in rs if not busy(r)] or rs, key=lambda r: r["tokens_per_second"])
               for name, rs in runs.items()}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    if "backpropagate" not in results:
        print(json.dumps(results, indent=2))
        return
    from importlib.metadata import version

    first = results["backpropagate"]
    versions = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "peft", "trl"))
    print(f"{args.steps} optimizer steps, {first['train_rows']} train rows, {first['heldout_rows']} held-out rows, "
          f"max_seq_length {MAX_LEN}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {first['threads']} torch threads; {versions}; "
          f"fastest uncontended of {args.repeats} round(s) each\n")
    print(table(results))
    print("\ntrained tok/s of every run (other processes' load in cores): " + "; ".join(
        f"{name} " + ", ".join(f"{r['tokens_per_second']:.0f} ({r['other_load'] or 0:.2f})" for r in rs)
        for name, rs in runs.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per contender")
    parser.add_argument("--rows", type=int, default=1000, help="first rows of the alpaca file to train on")
    parser.add_argument("--heldout", type=int, default=50, help="rows after the train rows to evaluate on")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the fastest run of each is kept")
    parser.add_argument("--retries", type=int, default=2, help="extra runs when other processes were busy")
    parser.add_argument("--wait-quiet", type=float, default=900.0,
                        help="seconds to wait at most, before each run, for other processes to go idle")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--contender", choices=CONTENDERS, help="run one contender in this process")
    parser.add_argument("--json", action="store_true", help="with --contender: print its result as JSON")
    parser.add_argument("--json-out", help="also write the raw figures of every run to this file")
    args = parser.parse_args()
    if args.contender is None:
        parent(args)
        return
    if args.contender != "backpropagate":
        need_trl()
    out = child(args.contender, args.steps, args.rows, args.heldout)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2), flush=True)


if __name__ == "__main__":
    main()
