"""Loss curves: a small chart drawn in the terminal, and PNG files (matplotlib, the `data` extra)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..atomic import check_output_location, write_file_atomically
from ..errors import BackpropagateError

_LEVELS = " ▁▂▃▄▅▆▇█"


def terminal_curve(values: Sequence[float], *, width: int = 60, height: int = 8) -> str:
    """The series as a bar chart of ``height`` text rows, one column per bucket of steps, with its range."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "(no loss recorded)"
    columns = min(width, len(values))
    means = []
    for c in range(columns):
        bucket = [v for v in values[c * len(values) // columns:(c + 1) * len(values) // columns] if math.isfinite(v)]
        means.append(sum(bucket) / len(bucket) if bucket else finite[0])
    low, high = min(finite), max(finite)
    eighths = [round((m - low) / ((high - low) or 1.0) * (height * 8 - 1)) + 1 for m in means]
    rows = []
    for row in range(height - 1, -1, -1):
        rows.append("".join(_LEVELS[max(0, min(8, e - row * 8))] for e in eighths))
    top, bottom = f"{high:9.4f} ┤", f"{low:9.4f} ┤"
    side = " " * (len(top) - 1) + "│"
    lines = [(top if i == 0 else bottom if i == height - 1 else side) + r for i, r in enumerate(rows)]
    lines.append(" " * len(top) + f"step 1 .. {len(values)}")
    return "\n".join(lines)


def plot_losses(series: Mapping[str, Sequence[float]], path: str | Path, *, title: str = "training loss") -> Path:
    """Write a PNG with one line per series (label -> per-step losses); returns the path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise BackpropagateError("DEP_EXTRA_MISSING", "loss plots need matplotlib, which is not installed.",
                                 hint='pip install "backpropagate[data]"') from exc

    check_output_location(path, "--plot")  # before drawing: a refused path costs nothing

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, values in series.items():
        axes.plot(range(1, len(values) + 1), list(values), label=label, linewidth=1.8)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if len(series) > 1 or any(label for label in series):
        axes.legend()
    figure.tight_layout()
    target = Path(path).expanduser()
    if target.is_dir():
        raise BackpropagateError("INPUT_OUTPUT_DIR_INVALID", f"--plot {str(target)!r} is a folder; name a .png file.")
    return write_file_atomically(target, lambda partial: figure.savefig(partial, format="png"))
