"""One run as text: what ``backprop show-run`` prints and the web UI's run details show (one formatter for
both), redacted: settings, data, status, checkpoints, exports, campaign merges, evaluation, before/after
answers and the loss curve."""

from __future__ import annotations

import json
from typing import Any

from ..logs import redact, redact_tree
from ..storage.store import RunRecord
from ..training.answers import answers_text
from .history import duration_seconds, flatten
from .plots import terminal_curve


def seconds_text(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{value:.1f}s"


def short(value: Any, width: int = 40) -> str:
    """Redacted first, then cut: a cut token would no longer look like one."""
    text = "-" if value is None else redact(str(value))
    return text if len(text) <= width else "…" + text[-(width - 1):]


def describe(r: RunRecord) -> str:
    """Everything the run recorded, as ``show-run`` prints it."""
    parts = ["\n".join(_summary(r)), "config\n" + "\n".join(
        f"  {key} = {json.dumps(value, default=str)}" for key, value in flatten(redact_tree(r.config)).items())]
    parts += [block for block in (_campaign(r), _evaluation(r), _answers(r)) if block]
    parts.append("loss\n" + terminal_curve(r.loss_history))
    return redact("\n\n".join(parts))


def _summary(r: RunRecord) -> list[str]:
    final = "-" if r.final_loss is None else f"{r.final_loss:.4f}"
    lines = [f"run {r.run_id}  ({r.status}{', error ' + r.error_code if r.error_code else ''})",
             f"output dir  {r.output_dir}", f"model       {r.model}",
             f"dataset     {r.dataset_path}  sha256 {r.dataset_hash}",
             f"steps       {r.completed_steps}/{r.steps}   final loss {final}   duration "
             f"{seconds_text(duration_seconds(r))}",
             f"started     {r.started_at}   ended {r.ended_at or '-'}"]
    if r.error_message:
        lines.append(f"error       {r.error_message}")
    lines += [f"{key:<11} {_number(r.details[key])}" for key in ("replay_of", "tokens_trained", "tokens_per_second")
              if r.details.get(key) is not None]
    replaced = f"  (replaced by run {r.details['replaced_by'][:8]})" if r.details.get("replaced_by") else ""
    lines.append(f"adapter     {r.output_path or '-'}{replaced}")
    lines += [f"checkpoint  {c}" for c in r.checkpoints]
    lines += [f"export      {e['format']} {e.get('quantization') or ''} {e['path']}"
              + (f"  parity {'passed' if e['parity_passed'] else 'FAILED'} ({e['agreement']:.1%})"
                 if e.get("parity_passed") is not None else "") for e in r.details.get("exports", [])]
    return lines


def _evaluation(r: RunRecord) -> str:
    """The held-out loss of every evaluation, the best one, and why the run stopped early (if it did)."""
    history = r.details.get("eval_history")
    if not history:
        return ""
    lines = [f"eval loss   best {r.details['best_eval_loss']:.4f} at step {r.details['best_step']}"
             f"   (held-out rows, mean loss per label token)",
             "  " + "   ".join(f"step {step}: {loss:.4f}" for step, loss in history)]
    if r.details.get("stop_reason"):
        lines.append(f"stopped     {r.details['stop_reason']}")
    lines += [f"{key.split('_')[0]:<11} {r.details[key]}" for key in ("best_adapter_path", "final_adapter_path")
              if r.details.get(key)]
    return "\n".join(lines)


def _answers(r: RunRecord) -> str:
    if not r.details.get("sample_answers"):
        return ""

    return "before / after (greedy: base model, then the tuned one)\n" + answers_text(r.details["sample_answers"])


def _campaign(r: RunRecord) -> str:
    if r.details.get("kind") != "multi_run":
        return ""
    from ..continual.forgetting import ForgettingReport  # lazy: torch

    lines = ["multi-run merges"]
    lines += [f"  run {run['run']}: {run['train_rows']} rows (+{run['holdout_rows']} held out) of "
              f"{short(run['data'], 200)}  final loss {run['final_loss']:.4f}  lambda {run['merge_weight']:.4f}"
              for run in r.details.get("runs", [])]
    if r.details.get("forgetting", {}).get("accuracy"):
        lines.append(ForgettingReport.from_json(json.dumps(r.details["forgetting"])).to_text())
    return "\n".join(lines)


def _number(value: object) -> object:
    """A measured rate reads as 742.9, not 742.9197897206385."""
    return f"{value:.1f}" if isinstance(value, float) else value
