"""What held-out evaluation costs a run at the defaults: the automatic hold-out, ``eval_steps`` 50 and the
default before/after sample answers, against the same run without them.

Workload: the training-throughput one (``bench/train_throughput.py``): the tiny llama of
``build_tiny_model("llama", size="small")``, LoRA r=16 all-linear, ``max_seq_length`` 512, the CPU defaults
(2 packed rows x 4), seed 0, no tracker; the data are alpaca_en_demo.json (999 rows) plus identity.json (91),
1090 conversations, so the defaults hold 5 % out (54 rows) by themselves.

- ``with evaluation``: ``train(all rows, steps)``: evaluates at steps 50 and 100 (and the end), answers the 2
  default sample prompts (the held-out rows' first user turns) before training, at each evaluation and after.
- ``without``: the same number of steps on the rows the evaluated run trains on (the first 999 of its 1036,
  so the defaults hold nothing out): no evaluation, no sample answers. The step count, not the row count,
  sets the work.

Both run in this process one after the other, alternating, ``--repeats`` times; each run's ``duration_seconds``
(data loading, model load, training, evaluation, answers, save) is kept, and the overhead is
(fastest with - fastest without) / fastest with. The script also times the evaluations directly (from a
step's ``on_log`` to its ``on_evaluate``, which fires after the scoring and that evaluation's sample answers),
so the share does not rest only on a difference of two noisy numbers.

    .venv/bin/python bench/eval_overhead.py [--steps 100] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SOURCES = (SHARED / "alpaca_en_demo.json", SHARED / "identity.json")
ARGS = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "max_seq_length": 512, "seed": 0,
        "report_to": "none", "save_steps": 0}


def _split_files(folder: Path) -> tuple[Path, Path]:
    """(every row, the first 999 training rows of the evaluated run): same rows trained, no hold-out."""
    from backpropagate.data import load_examples
    from backpropagate.training.evaluation import hold_out

    rows: list[dict[str, Any]] = []
    for source in SOURCES:
        rows += json.loads(source.read_text(encoding="utf-8"))
    everything = folder / "all.json"
    everything.write_text(json.dumps(rows), encoding="utf-8")
    split = hold_out(load_examples(str(everything)), seed=ARGS["seed"], require_assistant=True)
    held = set(split.eval_rows)
    kept = [r for i, r in enumerate(rows) if i not in held][:999]
    baseline = folder / "train-only.json"
    baseline.write_text(json.dumps(kept), encoding="utf-8")
    return everything, baseline


class EvalClock:
    """Seconds spent evaluating: from a step's ``on_log`` to its ``on_evaluate`` (the scoring and the sample
    answers of that evaluation)."""

    def __init__(self) -> None:
        self.last_log = 0.0
        self.scoring = 0.0
        self.evaluations = 0

    def on_log(self, metrics: dict[str, Any]) -> None:
        self.last_log = time.perf_counter()

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        self.scoring += time.perf_counter() - self.last_log
        self.evaluations += 1


def one_run(model: Path, data: Path, steps: int, out: Path) -> dict[str, Any]:
    from backpropagate import Trainer, TrainingCallback

    clock = EvalClock()
    run = Trainer(str(model), output_dir=out, **ARGS).train(
        str(data), steps=steps, callback=TrainingCallback(on_log=clock.on_log, on_evaluate=clock.on_evaluate))
    return {"seconds": run.duration_seconds, "eval_history": run.eval_history, "scoring": clock.scoring,
            "evaluations": clock.evaluations, "answers": len(run.sample_answers or [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not all(s.is_file() for s in SOURCES):
        sys.exit(f"needs {', '.join(map(str, SOURCES))} (../shared/datasets beside this clone)")
    import torch

    from backpropagate.testing import build_tiny_model

    model = build_tiny_model("llama", size="small")
    started = time.time()
    results: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        everything, baseline = _split_files(Path(tmp))
        for r in range(args.repeats):
            for name, data in (("with", everything), ("without", baseline)):
                result = one_run(model, data, args.steps, Path(tmp) / f"{name}-{r}")
                results[name].append(result)
                print(f"{name:<8} round {r + 1}: {result['seconds']:.1f} s, evaluations {result['evaluations']}, "
                      f"scoring {result['scoring']:.1f} s, loadavg {os.getloadavg()[0]:.2f}", flush=True)
    best = {k: min(v, key=lambda x: x["seconds"]) for k, v in results.items()}
    overhead = (best["with"]["seconds"] - best["without"]["seconds"]) / best["with"]["seconds"]
    direct = best["with"]["scoring"] / best["with"]["seconds"]
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                      "steps": args.steps, "eval_history": best["with"]["eval_history"],
                      "seconds_with": [round(x["seconds"], 1) for x in results["with"]],
                      "seconds_without": [round(x["seconds"], 1) for x in results["without"]],
                      "overhead_share": round(overhead, 4), "scoring_share": round(direct, 4),
                      "sample_answers": best["with"]["answers"]}, indent=2))


if __name__ == "__main__":
    main()
