"""The forgetting report of a continual campaign: what each run learned, and what later runs took away.

After run ``i`` (counted from 0 here) the adapter is scored on the held-out slice of every task
``j <= i``, which fills the lower-triangular matrix ``a[i][j]``. Scores are token accuracy on assistant
tokens (in [0, 1], higher is better) and, separately, the mean loss on those tokens. With T runs:

* **AA** (average accuracy, Chaudhry et al. 2018, "Riemannian Walk"): ``mean_j a[T-1][j]``, the final
  adapter's score averaged over all tasks.
* **BWT** (backward transfer, Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory"):
  ``mean_{j < T-1} (a[T-1][j] - a[j][j])``. Negative accuracy BWT is forgetting; 0.0 for a single run.
* **Plasticity**: ``mean_j a[j][j]``, the score on each task right after learning it. This is the usual
  definition in the CL literature, where it is also called learning accuracy (Riemer et al. 2019,
  "Learning to Learn without Forgetting by Maximizing Transfer and Minimizing Interference").

For the loss matrix the same formulas apply, but lower is better: a positive loss BWT is forgetting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import write_file_atomically, write_text_atomically
from ..data.packing import collate, pack
from ..data.templates import IGNORE_INDEX
from ..errors import BackpropagateError

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from rich.table import Table

    from ..data.templates import TokenizedSample

JSON_NAME = "forgetting.json"
PNG_NAME = "forgetting.png"
#: Pixel size of the saved heat-map (two panels: accuracy and loss); fixed so readers can lay it out.
HEATMAP_SIZE_PX = (1000, 450)
_DPI = 100
_FORMAT_VERSION = 1

Matrix = Sequence[Sequence[float]]


def check_matrix(matrix: Matrix, name: str = "matrix") -> None:
    """Raise INPUT_INVALID_VALUE unless row ``i`` holds exactly ``i + 1`` finite scores."""
    for i, row in enumerate(matrix):
        if len(row) != i + 1:
            raise BackpropagateError(
                "INPUT_INVALID_VALUE",
                f"{name} must be lower-triangular: row {i} (after run {i + 1}) has {len(row)} scores, "
                f"expected {i + 1} (one per task seen so far).")
        bad = [v for v in row if not isinstance(v, int | float) or not math.isfinite(v)]
        if bad:
            raise BackpropagateError("INPUT_INVALID_VALUE", f"{name} row {i} holds non-finite scores {bad}.")


def _nonempty(matrix: Matrix) -> None:
    check_matrix(matrix)
    if not matrix:
        raise BackpropagateError("INPUT_INVALID_VALUE", "the forgetting matrix has no runs yet.")


def average_score(matrix: Matrix) -> float:
    """AA: the last row's mean, i.e. the final adapter's score averaged over every task."""
    _nonempty(matrix)
    return sum(matrix[-1]) / len(matrix[-1])


def backward_transfer(matrix: Matrix) -> float:
    """BWT: mean over j < T-1 of a[T-1][j] - a[j][j]; 0.0 when there is a single run."""
    _nonempty(matrix)
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    return sum(matrix[last][j] - matrix[j][j] for j in range(last)) / last


def plasticity(matrix: Matrix) -> float:
    """Mean of the diagonal a[j][j]: how well each task was learned right after its run."""
    _nonempty(matrix)
    return sum(matrix[j][j] for j in range(len(matrix))) / len(matrix)


def summarize(matrix: Matrix) -> dict[str, float]:
    """``{"aa", "bwt", "plasticity"}`` of one matrix."""
    return {"aa": average_score(matrix), "bwt": backward_transfer(matrix), "plasticity": plasticity(matrix)}


def _floats(matrix: Any, name: str) -> list[list[float]]:
    try:
        return [[float(v) for v in row] for row in matrix]
    except (TypeError, ValueError) as exc:
        raise BackpropagateError("INPUT_INVALID_VALUE", f"{name} must be a list of rows of numbers: {exc}.") from exc


@dataclass
class ForgettingReport:
    """Accuracy and loss matrices of a campaign, with the metrics derived from them.

    ``accuracy[i][j]`` / ``loss[i][j]``: score on task j's held-out slice after run i (j <= i).
    ``notes`` carries flags a reader must see next to the numbers (e.g. an experimental adapter type).
    """
    accuracy: list[list[float]] = field(default_factory=list)
    loss: list[list[float]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    merge_mode: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.accuracy = _floats(self.accuracy, "accuracy")
        self.loss = _floats(self.loss, "loss")
        check_matrix(self.accuracy, "accuracy")
        check_matrix(self.loss, "loss")
        if len(self.accuracy) != len(self.loss):
            raise BackpropagateError("INPUT_INVALID_VALUE",
                                     f"accuracy has {len(self.accuracy)} runs but loss has {len(self.loss)}.")
        if any(not 0.0 <= v <= 1.0 for row in self.accuracy for v in row):
            raise BackpropagateError("INPUT_INVALID_VALUE", "token accuracies must lie in [0, 1].")
        if self.tasks and len(self.tasks) < self.num_runs:
            raise BackpropagateError("INPUT_INVALID_VALUE",
                                     f"{len(self.tasks)} task names for {self.num_runs} runs.")

    @property
    def num_runs(self) -> int:
        return len(self.accuracy)

    def task_name(self, j: int) -> str:
        return self.tasks[j] if j < len(self.tasks) else f"task {j + 1}"

    def add_run(self, accuracy: Sequence[float], loss: Sequence[float]) -> None:
        """Append the scores after the next run: one per task seen so far, oldest first."""
        row_acc, row_loss = [float(v) for v in accuracy], [float(v) for v in loss]
        candidate = ForgettingReport(self.accuracy + [row_acc], self.loss + [row_loss], list(self.tasks),
                                     self.merge_mode, list(self.notes))
        self.accuracy, self.loss = candidate.accuracy, candidate.loss

    @property
    def aa(self) -> float:
        return average_score(self.accuracy)

    @property
    def bwt(self) -> float:
        return backward_transfer(self.accuracy)

    @property
    def plasticity(self) -> float:
        return plasticity(self.accuracy)

    def summary(self) -> dict[str, dict[str, float]] | None:
        """AA, BWT and plasticity of both matrices; None before the first run."""
        if not self.num_runs:
            return None
        return {"accuracy": summarize(self.accuracy), "loss": summarize(self.loss)}

    # --- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": _FORMAT_VERSION, "merge_mode": self.merge_mode,
                "tasks": self.tasks,
                "notes": self.notes, "accuracy": self.accuracy, "loss": self.loss, "summary": self.summary()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ForgettingReport:
        """Read :meth:`to_json` output back; the derived summary is recomputed, not trusted."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BackpropagateError("INPUT_INVALID_JSON", f"forgetting report is not valid JSON: {exc}.") from exc
        if not isinstance(data, dict) or "accuracy" not in data or "loss" not in data:
            raise BackpropagateError("INPUT_INVALID_VALUE",
                                     "forgetting report JSON needs 'accuracy' and 'loss' matrices.")
        if data.get("version", _FORMAT_VERSION) > _FORMAT_VERSION:
            raise BackpropagateError("INPUT_INVALID_VALUE",
                                     f"forgetting report version {data['version']} is newer than this "
                                     f"backpropagate reads ({_FORMAT_VERSION}); upgrade backpropagate.")
        return cls(accuracy=data["accuracy"], loss=data["loss"], tasks=list(data.get("tasks") or []),
                   merge_mode=data.get("merge_mode"), notes=list(data.get("notes") or []))

    # --- display ------------------------------------------------------------------------------------
    def to_table(self) -> Table:
        """A rich Table: one row per run, accuracy % and (loss) per task, then the summary rows."""
        from rich.table import Table

        title = "Forgetting report" + (f" (merge_mode={self.merge_mode})" if self.merge_mode else "")
        table = Table(title=title, caption=self._caption(), caption_justify="left")
        table.add_column("after run", justify="right")
        for j in range(self.num_runs):
            table.add_column(self.task_name(j), justify="right")
        for i in range(self.num_runs):
            cells = [f"{self.accuracy[i][j] * 100:.1f}% ({self.loss[i][j]:.3f})" for j in range(i + 1)]
            table.add_row(str(i + 1), *cells, *[""] * (self.num_runs - i - 1))
        return table

    def _caption(self) -> str:
        if not self.num_runs:
            return "no runs yet"
        acc, loss = summarize(self.accuracy), summarize(self.loss)
        lines = [f"accuracy: AA {acc['aa'] * 100:.1f}%  BWT {acc['bwt'] * 100:+.1f} pts  "
                 f"plasticity {acc['plasticity'] * 100:.1f}%",
                 f"loss: AA {loss['aa']:.3f}  BWT {loss['bwt']:+.3f}  plasticity {loss['plasticity']:.3f}",
                 "cells: token accuracy on assistant tokens (held-out loss); BWT < 0 pts = forgetting"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_text(self, width: int = 120) -> str:
        """The table as plain text (no colour codes), for logs and terminals."""
        import io

        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=width, color_system=None, force_terminal=False).print(self.to_table())
        return buffer.getvalue()

    def heatmap_figure(self) -> Figure:
        """Accuracy and loss heat-maps side by side (upper triangle left blank); needs matplotlib."""
        return _heatmap_figure(self)

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``forgetting.json`` and ``forgetting.png`` into ``directory``; each file appears whole or not at all."""
        directory = Path(directory).expanduser()
        figure = self.heatmap_figure()  # before touching the disk: a missing extra writes nothing
        json_path = write_text_atomically(directory / JSON_NAME, self.to_json() + "\n")
        png_path = write_file_atomically(directory / PNG_NAME, lambda p: figure.savefig(p, dpi=_DPI, format="png"))
        return json_path, png_path


def _heatmap_figure(report: ForgettingReport) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise BackpropagateError("DEP_EXTRA_MISSING",
                                 "the forgetting heat-map needs matplotlib, which is not installed.",
                                 hint="pip install 'backpropagate[data]' (or pip install matplotlib).") from exc
    import numpy as np

    # Figure + the Agg canvas directly (not pyplot): no global backend switch, nothing left open.
    fig = Figure(figsize=(HEATMAP_SIZE_PX[0] / _DPI, HEATMAP_SIZE_PX[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    n = report.num_runs
    panels = (("token accuracy", report.accuracy, "viridis", "{:.0%}", 0.0, 1.0),
              ("held-out loss", report.loss, "magma_r", "{:.2f}", None, None))
    for k, (label, matrix, cmap, fmt, vmin, vmax) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        grid = np.full((max(n, 1), max(n, 1)), np.nan)
        for i, row in enumerate(matrix):
            grid[i, :len(row)] = row
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        norm = image.norm
        assert isinstance(norm, Normalize)  # the one imshow makes of vmin/vmax; it maps a single value too
        fig.colorbar(image, ax=ax)
        ax.set_title(label)
        ax.set_xlabel("task (held-out slice)")
        ax.set_ylabel("after run")
        ax.set_xticks(range(n), [str(j + 1) for j in range(n)])
        ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
        if n <= 10:  # beyond that the numbers no longer fit in the cells
            for i, row in enumerate(matrix):
                for j, value in enumerate(row):
                    r, g, b, _ = image.cmap(norm(value))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
    summary = report.summary()
    if summary:
        acc = summary["accuracy"]
        fig.suptitle(f"AA {acc['aa']:.1%}   BWT {acc['bwt'] * 100:+.1f} pts   "
                     f"plasticity {acc['plasticity']:.1%}" + "".join(f"   [{n}]" for n in report.notes))
    fig.tight_layout()
    return fig


def evaluate(model: torch.nn.Module, samples: Sequence[TokenizedSample], pad_token_id: int, *,
             max_seq_length: int = 1024, batch_size: int = 8) -> tuple[float, float]:
    """(mean loss, token accuracy) over the labelled (assistant) tokens of ``samples``.

    Samples are packed padding-free like in training (restarting position ids, ``use_cache=False``,
    no attention mask) so a sample is scored exactly as it is alone. Token accuracy counts positions
    where the argmax prediction equals the target, over targets != -100. The model's train/eval mode
    is restored afterwards.
    """
    import torch

    width = max([max_seq_length, *(len(s.input_ids) for s in samples)])  # never truncate a held-out sample
    rows = pack(samples, width, seed=None).rows
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = collate(rows[start:start + batch_size], pad_token_id)
                logits = model(input_ids=batch["input_ids"].to(device),
                               position_ids=batch["position_ids"].to(device), use_cache=False).logits
                targets = batch["targets"].to(device)
                keep = targets != IGNORE_INDEX
                scored = logits[keep].float()
                wanted = targets[keep]
                loss_sum += float(torch.nn.functional.cross_entropy(scored, wanted, reduction="sum"))
                correct += int((scored.argmax(dim=-1) == wanted).sum())
                count += int(keep.sum())
    finally:
        model.train(was_training)
    if not count:
        raise BackpropagateError("INPUT_DATASET_EMPTY",
                                 f"the {len(samples)} held-out samples have no assistant tokens to score.",
                                 hint="Hold out examples that contain an assistant reply.")
    loss = loss_sum / count
    if not math.isfinite(loss):
        raise BackpropagateError("RUNTIME_LOSS_NOT_FINITE", f"held-out loss is {loss}.")
    return loss, correct / count
