"""bench/continual.py cannot rot: its --quick core runs on one seed and yields well-formed reports."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

from backpropagate.continual.forgetting import ForgettingReport

BENCH = Path(__file__).resolve().parents[1] / "bench" / "continual.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_continual", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_core_on_one_seed() -> None:
    bench = _load_bench()
    cfg = bench.QUICK
    results = bench.run_seed(0, cfg, ("seqlora", "slao", "multitask"))
    assert set(results) == {"seqlora", "slao", "multitask"}
    chance = 1 / cfg.labels
    for method in ("seqlora", "slao"):
        report = ForgettingReport.from_json(_json(results[method]))  # validates lower-triangular, finite
        assert report.num_runs == cfg.tasks and report.merge_mode == method
        assert [len(row) for row in report.accuracy] == list(range(1, cfg.tasks + 1))
        assert all(math.isfinite(results[method][k]) for k in ("aa", "bwt", "plasticity"))
        assert results[method]["aa"] == report.aa and results[method]["bwt"] == report.bwt
        assert report.plasticity > chance + 0.3  # each task is really learned, far above chance
    assert len(results["multitask"]["accuracy"]) == cfg.tasks
    assert results["multitask"]["aa"] > chance + 0.3
    assert results["seqlora"]["bwt"] < 0  # sequential LoRA forgets: the benchmark measures something
    table = bench.markdown([results], ("seqlora", "slao", "multitask"))
    assert table.count("\n") == 4 and "SLAO" in table and "n/a" in table


def _json(result: dict) -> str:
    import json

    return json.dumps({k: result[k] for k in ("accuracy", "loss", "tasks", "merge_mode", "notes")})
