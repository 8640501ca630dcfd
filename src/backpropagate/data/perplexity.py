"""Score every row with a reference causal LM and drop the outliers (gibberish, boilerplate) by perplexity.

Rows are rendered and labelled exactly as for training (``data.templates``): with ``on="assistant"`` the
score covers the assistant tokens (plus the end-of-turn token after each reply), with ``on="all"`` every
token of the rendered conversation; raw text rows always score every token. Perplexity is
``exp(mean negative log-likelihood)`` over those tokens. Rows are packed without padding
(``data.packing``, order kept) and run in batches under ``torch.inference_mode`` with ``use_cache=False``;
rows longer than ``max_seq_length`` are scored on their first ``max_seq_length`` tokens. A row with no
token to score (or one its chat template refuses) gets no score and is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackpropagateError, invalid_value
from .packing import collate, pack
from .reference import load_reference_model
from .rowset import Example, Progress, check_output_path, load_rowset, write_jsonl, write_rows
from .templates import TokenizedSample, tokenize_conversation, tokenize_text

__all__ = ["PerplexityResult", "PerplexityScore", "perplexity_file", "score_examples", "scores_path_for",
           "select_by_perplexity"]

SCORE_MODES = ("assistant", "all")


@dataclass(frozen=True)
class PerplexityScore:
    """One row's score; ``perplexity`` is None when nothing could be scored (``error`` says why)."""
    row: int  # 0-based
    perplexity: float | None
    mean_nll: float | None
    tokens: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"row": self.row + 1, "perplexity": self.perplexity, "mean_nll": self.mean_nll,
                                  "tokens": self.tokens}
        if self.error:
            record["error"] = self.error
        return record


@dataclass
class PerplexityResult:
    """Scores of every row, rows kept, and why each dropped row was dropped (0-based row -> reason)."""
    scores: list[PerplexityScore]
    kept: list[int]
    dropped: dict[int, str] = field(default_factory=dict)
    cutoffs: dict[str, float] = field(default_factory=dict)  # the absolute bounds actually applied

    def to_dict(self) -> dict[str, Any]:
        scored = [s.perplexity for s in self.scores if s.perplexity is not None]
        return {"rows": len(self.scores), "kept": len(self.kept), "removed": len(self.dropped),
                "unscored": len(self.scores) - len(scored), "cutoffs": self.cutoffs}


def _score_batch(model: Any, rows: Sequence[Any], pad: int, lengths: list[int], nll: Any, counts: Any) -> None:
    """Add each packed sample's summed token loss and token count of one batch into ``nll`` / ``counts``."""
    import torch

    batch = collate(list(rows), pad)
    owner = torch.full_like(batch["targets"], -1)
    for r, row in enumerate(rows):
        offset = 0
        for sample_id in row.sample_ids:
            owner[r, offset:offset + lengths[sample_id]] = sample_id
            offset += lengths[sample_id]
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                   use_cache=False).logits.float()
    targets = batch["targets"].to(device)
    losses = torch.nn.functional.cross_entropy(
        logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100, reduction="none").cpu()
    mask = (targets.view(-1) != -100).cpu()
    owners = owner.view(-1)[mask]
    nll.index_add_(0, owners, losses[mask].double())
    counts.index_add_(0, owners, torch.ones_like(owners))


def score_examples(examples: Sequence[Example], model: Any, tokenizer: Any = None, *, on: str = "assistant",
                   batch_size: int = 8, max_seq_length: int = 1024, packing: bool = True,
                   trust_remote_code: bool = False, progress: Progress | None = None) -> list[PerplexityScore]:
    """Perplexity of every example under ``model`` (a loaded causal LM with ``tokenizer``, or a hub id / folder).

    ``packing=False`` runs one row per sequence, for models whose attention cannot separate packed rows.
    """
    import torch

    if on not in SCORE_MODES:
        raise invalid_value("on", on, "'assistant' or 'all'")
    for name, value in (("batch_size", batch_size), ("max_seq_length", max_seq_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid_value(name, value, "a positive integer")
    if isinstance(model, str):
        model, tokenizer = load_reference_model(model, trust_remote_code=trust_remote_code)
    elif tokenizer is None:
        raise invalid_value("tokenizer", None, "the model's tokenizer when a loaded model is passed")
    samples, errors = _tokenize(examples, tokenizer, on)
    plan = pack(samples, max_seq_length, packing=packing, seed=None)
    lengths = [min(len(s.input_ids), max_seq_length) for s in samples]
    nll = torch.zeros(len(samples), dtype=torch.float64)
    counts = torch.zeros(len(samples), dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    was_training = model.training
    model.eval()
    done = 0
    with torch.inference_mode():
        for start in range(0, len(plan.rows), batch_size):
            rows = plan.rows[start:start + batch_size]
            _score_batch(model, rows, pad, lengths, nll, counts)
            done += sum(len(row.sample_ids) for row in rows)
            if progress is not None:
                progress(done, len(samples))
    if was_training:
        model.train()
    scores = []
    for i in range(len(samples)):
        n = int(counts[i])
        if n == 0:
            scores.append(PerplexityScore(i, None, None, 0, errors.get(i, "no token to score")))
            continue
        mean = float(nll[i]) / n
        scores.append(PerplexityScore(i, math.exp(min(mean, 700.0)), mean, n))
    return scores


def _tokenize(examples: Sequence[Example], tokenizer: Any, on: str) -> tuple[list[Any], dict[int, str]]:
    """Training-identical samples; a row the template refuses becomes an empty sample with its reason."""
    samples, errors = [], {}
    for i, example in enumerate(examples):
        try:
            if isinstance(example, str):
                samples.append(tokenize_text(tokenizer, example))
            else:
                samples.append(tokenize_conversation(tokenizer, example, train_on_responses=on == "assistant",
                                                     row=i + 1))
        except BackpropagateError as exc:
            if exc.code == "INPUT_TEMPLATE_MISSING":
                raise
            samples.append(TokenizedSample([], []))
            errors[i] = exc.message
    return samples, errors


def select_by_perplexity(scores: Sequence[PerplexityScore], *, max_perplexity: float | None = None,
                         min_perplexity: float | None = None, max_percentile: float | None = None,
                         min_percentile: float | None = None) -> PerplexityResult:
    """Drop rows above/below absolute perplexities or percentiles of the scored rows (unscored rows stay)."""
    import numpy as np

    for name, value in (("max_perplexity", max_perplexity), ("min_perplexity", min_perplexity)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise invalid_value(name, value, "a number > 0")
    for name, value in (("max_percentile", max_percentile), ("min_percentile", min_percentile)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100):
            raise invalid_value(name, value, "a percentile in [0, 100]")
    if max_perplexity is not None and min_perplexity is not None and min_perplexity >= max_perplexity:
        raise invalid_value("min_perplexity", min_perplexity, f"less than max_perplexity={max_perplexity}")
    if max_percentile is not None and min_percentile is not None and min_percentile >= max_percentile:
        raise invalid_value("min_percentile", min_percentile, f"less than max_percentile={max_percentile}")
    values = np.array([s.perplexity for s in scores if s.perplexity is not None], dtype=np.float64)
    cutoffs: dict[str, float] = {}
    if max_perplexity is not None:
        cutoffs["max"] = float(max_perplexity)
    if min_perplexity is not None:
        cutoffs["min"] = float(min_perplexity)
    if len(values):
        if max_percentile is not None:
            cutoffs["max"] = min(cutoffs.get("max", math.inf), float(np.percentile(values, max_percentile)))
        if min_percentile is not None:
            cutoffs["min"] = max(cutoffs.get("min", 0.0), float(np.percentile(values, min_percentile)))
    kept, dropped = [], {}
    for score in scores:
        value = score.perplexity
        if value is not None and "max" in cutoffs and value > cutoffs["max"]:
            dropped[score.row] = f"perplexity {value:.4g} > {cutoffs['max']:.4g}"
        elif value is not None and "min" in cutoffs and value < cutoffs["min"]:
            dropped[score.row] = f"perplexity {value:.4g} < {cutoffs['min']:.4g}"
        else:
            kept.append(score.row)
    return PerplexityResult(scores=list(scores), kept=kept, dropped=dropped, cutoffs=cutoffs)


def scores_path_for(output: str | Path) -> Path:
    """Where the scores of ``output`` go: ``clean.jsonl`` -> ``clean.scores.jsonl``."""
    path = Path(output).expanduser()
    return path.with_name(path.stem + ".scores.jsonl")


def perplexity_file(source: Any, output: str | Path, model: Any, *, tokenizer: Any = None, on: str = "assistant",
                    max_perplexity: float | None = None, min_perplexity: float | None = None,
                    max_percentile: float | None = None, min_percentile: float | None = None,
                    batch_size: int = 8, max_seq_length: int = 1024, packing: bool = True,
                    keep_format: bool = False, overwrite: bool = False, trust_remote_code: bool = False,
                    format: str | None = None, text_column: str | None = None,
                    progress: Progress | None = None) -> PerplexityResult:
    """Score a dataset, write the kept rows to ``output`` and every row's score to ``<output stem>.scores.jsonl``."""
    rowset = load_rowset(source, format=format, text_column=text_column)
    out = check_output_path(output, inputs=[rowset.source], overwrite=overwrite)
    scores_out = check_output_path(scores_path_for(out), inputs=[rowset.source, out], overwrite=overwrite,
                                   what="scores file")
    select_by_perplexity([], max_perplexity=max_perplexity, min_perplexity=min_perplexity,
                         max_percentile=max_percentile, min_percentile=min_percentile)  # validate before loading
    scores = score_examples(rowset.examples, model, tokenizer, on=on, batch_size=batch_size,
                            max_seq_length=max_seq_length, packing=packing, trust_remote_code=trust_remote_code,
                            progress=progress)
    result = select_by_perplexity(scores, max_perplexity=max_perplexity, min_perplexity=min_perplexity,
                                  max_percentile=max_percentile, min_percentile=min_percentile)
    write_jsonl(scores_out, ({**s.to_dict(), "kept": s.row not in result.dropped,
                              **({"reason": result.dropped[s.row]} if s.row in result.dropped else {})}
                             for s in scores))
    write_rows(rowset, result.kept, out, keep_format=keep_format)
    return result
