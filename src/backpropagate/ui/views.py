"""Turning API results into what the page shows: error lines, the job panel, run tables. No Gradio here."""

from __future__ import annotations

import re
import time
from typing import Any

from ..runs.describe import describe
from .jobs import JobState, error_text

__all__ = ["diff_text", "error_markdown", "job_markdown", "loss_rows", "run_text", "runs_table"]

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|])")
RUN_COLUMNS = ["id", "status", "model", "dataset", "steps", "final loss", "started", "output"]


def md_escape(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def error_markdown(exc: BaseException) -> str:
    """``[CODE]: message`` and the hint, never a traceback (the same shape as the CLI's)."""
    code, message, hint = error_text(exc)
    return error_parts_markdown(code, message, hint)


def error_parts_markdown(code: str, message: str, hint: str) -> str:
    lines = f"**Error** {md_escape(f'[{code}]: {message}')}"
    return lines + (f"\n\nhint: {md_escape(hint)}" if hint else "")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{value:.0f}s"


def job_markdown(state: JobState) -> str:
    """The live status line(s) of the current job."""
    if state.status == "idle":
        return "No job has run since the server started."
    head = f"**{state.kind}** ({md_escape(state.title)}): **{state.status}**"
    last = state.latest()
    parts = [head]
    if last:
        run = f"run {last['run']}, " if "run" in last else ""
        loss = last.get("loss")
        tps = last.get("tokens_per_second")
        parts.append(f"{run}step {last.get('step')}/{last.get('steps_total')} · loss "
                     f"{'-' if loss is None else f'{loss:.4f}'} · tokens/s {'-' if tps is None else f'{tps:.0f}'} · "
                     f"elapsed {_seconds(last.get('elapsed_seconds'))} · ETA {_seconds(state.eta_seconds())}")
    elif state.running and state.started_at:
        parts.append(f"starting… ({_seconds(time.time() - state.started_at)})")
    result = state.result
    if result.get("run_id"):
        parts.append(f"run id `{result['run_id']}`" + (f" · output `{result['output']}`" if result.get("output")
                                                      else ""))
    if state.status == "completed" and result.get("final_loss") is not None:
        parts.append(f"final loss {result['final_loss']:.4f}")
    if state.error:
        parts.append(error_parts_markdown(*state.error))
    return "\n\n".join(parts)


def loss_rows(state: JobState) -> list[dict[str, Any]]:
    """Rows for the live loss chart: step, loss and the series (train, eval, or the run number in a campaign)."""
    rows = [{"step": m["step"], "loss": m["loss"], "series": f"run {m['run']}" if "run" in m else "train"}
            for m in state.metrics if "step" in m and "loss" in m]
    rows += [{"step": m["step"], "loss": m["eval_loss"], "series": "eval"} for m in state.metrics if "eval_loss" in m]
    if rows:  # the chart fixes its legend at the first draw: name the runs still to come, without points
        seen = {r["series"] for r in rows}
        rows += [{"step": rows[0]["step"], "loss": None, "series": name}
                 for name in state.result.get("series", []) if name not in seen]
    return rows


def runs_table(records: list[Any], root: Any) -> list[list[Any]]:
    from pathlib import Path

    rows = []
    for r in records:
        kind = " (multi-run)" if r.is_campaign else ""
        try:
            output = str(Path(r.output_dir).resolve().relative_to(root))
        except (TypeError, ValueError):
            output = r.output_dir or "-"
        dataset = Path(r.dataset_path).name if r.dataset_path else "-"
        rows.append([r.run_id[:8], r.status + kind, Path(r.model).name if "/" in r.model and Path(r.model).exists()
                     else r.model, dataset, f"{r.completed_steps}/{r.steps}",
                     "-" if r.final_loss is None else round(r.final_loss, 4), r.started_at[:19].replace("T", " "),
                     output])
    return rows


def run_text(r: Any) -> str:
    """A run's details, exactly as ``backprop show-run`` prints them."""

    return describe(r)


def diff_text(d: Any) -> str:
    """A ``runs.diff`` result (the one ``backprop diff-runs`` prints) as text: settings that differ, then results."""
    a, b = d.a.run_id[:8], d.b.run_id[:8]
    lines = [f"{'setting':<40} {a:<24} {b}"]
    if not d.config:
        lines.append("(no setting differs)")
    for key, (x, y) in d.config.items():
        lines.append(f"{key:<40} {str(x):<24} {y}")
    lines.append("")
    lines.append(f"same dataset: {'yes' if d.same_dataset else 'no'}")
    for key, (x, y) in d.results.items():
        lines.append(f"{key:<40} {_value(x):<24} {_value(y)}")
    return "\n".join(lines)


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)
