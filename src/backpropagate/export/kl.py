"""KL divergence between PyTorch's and llama.cpp's next-token distributions, reported the way llama.cpp's
``perplexity --kl-divergence`` does: mean KLD with its uncertainty, maximum, 99th/95th percentile and
median, and the share of positions with the same top-1 token (with its uncertainty).

Top-1 agreement alone is a coarse measure on a few hundred positions (near-ties flip either way); the KL
divergence sees every probability, so it tells a correct quantization from a slightly worse one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Rows of logits turned into float64 probabilities at a time (a 262k vocabulary is 2 MiB a row).
_CHUNK = 16


@dataclass(frozen=True)
class KLStats:
    """Summary of per-position KL(PyTorch || GGUF), in nats, as llama.cpp's perplexity tool prints it."""

    positions: int
    mean: float
    uncertainty: float
    maximum: float
    p99: float
    p95: float
    median: float
    same_top1: float
    same_top1_uncertainty: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def brief(self) -> str:
        """One line: ``KLD 0.006007 ± 0.000515 (max 0.06025, 99% 0.03993, median 0.003473), same top-1 93.44%
        ± 1.54%``."""
        return (f"KLD {nats(self.mean)} ± {nats(self.uncertainty)} (max {self.maximum:.4g}, 99% {self.p99:.4g}, "
                f"median {self.median:.4g}), same top-1 {self.same_top1:.2%} ± {self.same_top1_uncertainty:.2%}")


@dataclass
class Divergence:
    """Per-position values for one GGUF against PyTorch; kept in memory to compare two files position by
    position (a paired comparison is far less noisy than comparing two means)."""

    kl: np.ndarray  # float64, one value per position
    same_top1: np.ndarray  # bool, one value per position
    max_logit_diff: float = 0.0

    @classmethod
    def empty(cls) -> Divergence:
        return cls(np.zeros(0, dtype=np.float64), np.zeros(0, dtype=bool))

    def add(self, reference: np.ndarray, logits: np.ndarray) -> None:
        """Append the positions of one prompt (``reference``: PyTorch logits, ``logits``: llama.cpp's)."""
        kl = [position_kl(reference[i:i + _CHUNK], logits[i:i + _CHUNK]) for i in range(0, len(reference), _CHUNK)]
        self.kl = np.concatenate([self.kl, *kl])
        self.same_top1 = np.concatenate([self.same_top1, reference.argmax(-1) == logits.argmax(-1)])
        self.max_logit_diff = max(self.max_logit_diff, float(np.abs(reference - logits).max()))

    @property
    def agreement(self) -> float:
        return float(self.same_top1.mean()) if len(self.same_top1) else 0.0

    def stats(self) -> KLStats:
        return kl_stats(self.kl, self.same_top1)


def nats(value: float) -> str:
    """A KL value as llama.cpp prints it (six decimals), or in exponent form where that would show 0."""
    return f"{value:.6f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def position_kl(reference: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) || softmax(logits)) of each row, over the whole vocabulary, in nats."""
    ref, got = _log_softmax(reference), _log_softmax(logits)
    kl = (np.exp(ref) * (ref - got)).sum(-1)
    return np.maximum(kl, 0.0)  # float rounding may give -1e-17 for identical rows


def kl_from_uniform(logits: np.ndarray) -> np.ndarray:
    """KL(softmax(logits) || uniform) of each row: log V - entropy, what a guess that knows nothing loses.
    The scale on which a sanity bound for a quantized file can be set for any model and vocabulary."""
    out = []
    for i in range(0, len(logits), _CHUNK):
        logp = _log_softmax(logits[i:i + _CHUNK])
        out.append((np.exp(logp) * logp).sum(-1) + math.log(logits.shape[-1]))
    return np.maximum(np.concatenate(out), 0.0) if out else np.zeros(0)


def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error, as llama.cpp computes them (0 for fewer than 11 values)."""
    n = len(values)
    if n < 1:
        return 0.0, 0.0
    mean = float(values.mean())
    var = float((values * values).mean()) - mean * mean
    return mean, math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0


def kl_stats(kl: np.ndarray, same_top1: np.ndarray) -> KLStats:
    """The summary of per-position KL values and top-1 matches."""
    n = len(kl)
    if n == 0:
        return KLStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    mean, unc = mean_and_uncertainty(kl)
    top = float(same_top1.mean())
    top_unc = math.sqrt(top * (1 - top) / (n - 1)) if n > 1 else 0.0
    p99, p95, median = (float(v) for v in np.percentile(kl, [99, 95, 50]))
    return KLStats(positions=n, mean=mean, uncertainty=unc, maximum=float(kl.max()), p99=p99, p95=p95,
                   median=median, same_top1=top, same_top1_uncertainty=top_unc)


def paired_margin(ours: np.ndarray, reference: np.ndarray, sigmas: float = 2.0) -> float:
    """``sigmas`` standard errors of the mean of the paired difference ``ours - reference``: how far apart
    two equally good files' means may fall by chance on these positions."""
    return sigmas * mean_and_uncertainty(np.asarray(ours, dtype=np.float64) - reference)[1]
