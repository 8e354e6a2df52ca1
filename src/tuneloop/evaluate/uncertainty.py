"""How sure is a golden-set drop? A paired bootstrap over the golden rows, pure numpy.

With 5 golden rows per label, one row decides 20 points of that label's recall, and two extra
mistakes in 50 rows move a 10-label macro-F1 by about 4 points: the size of a real but small
regression, and of retraining noise. Both models are scored on the same rows, so the rows are
resampled *together* (paired): each resample redraws n rows with replacement and recomputes both
macro-F1s over the same draw. The share of resamples in which the candidate is no worse tells how
much of the drop one unlucky row can explain.

A drop counts as real when its one-sided lower bound at `confidence` is above zero: with 95%, the
candidate is worse in at least 95% of resamples. Worked out on 10 labels x 5 rows, champion right on
all 50, candidate wrong on k of them: a resample misses all k with probability (1 - k/50)^50, 13%
for k = 2 (noise for every seed), 4.5% for k = 3 (on the edge of the 5% tail: real for 84 to 92 of
100 seeds, tests/test_evaluate.py) and 1.5% for k = 4 (real for every seed). The gates use this for
the golden macro-F1 regression only, seeded from the round's key, and refuse it only when it is both
over its limit and real; the per-label check never rests on it (evaluate/gates.py says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000  # the 5% tail then holds 100 resamples: the bound moves by under a point between seeds


@dataclass(frozen=True)
class DropInterval:
    """A drop in points (champion minus candidate) and its one-sided lower bound."""

    drop: float
    lower: float
    confidence: float
    rows: int

    @property
    def real(self) -> bool:
        """The candidate is worse in at least `confidence` of the resamples."""
        return self.lower > 0.0


def _macro_f1(true: np.ndarray, pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Macro-F1 over `labels` for each row of (resamples, n) label-index arrays; a label with no
    true rows in a resample is left out of that resample's mean (as `metrics.score` does)."""
    one_true = true[..., None] == labels  # (B, n, L)
    one_pred = pred[..., None] == labels
    tp = (one_true & one_pred).sum(axis=1)
    fp = (~one_true & one_pred).sum(axis=1)
    fn = (one_true & ~one_pred).sum(axis=1)
    denominator = 2 * tp + fp + fn
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    present = one_true.any(axis=1)
    counted = present.sum(axis=1)
    return np.where(counted > 0, (f1 * present).sum(axis=1) / np.maximum(counted, 1), 0.0)


def paired_drop(
    y_true: Sequence[str],
    champion_pred: Sequence[str],
    candidate_pred: Sequence[str],
    labels: Sequence[str],
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> DropInterval:
    """The candidate's macro-F1 drop over `labels` versus the champion, on the same rows, with its
    bootstrap lower bound at `confidence` (points). Seeded: the same inputs give the same bound."""
    n = len(y_true)
    if not n or len(champion_pred) != n or len(candidate_pred) != n:
        raise ValueError("paired_drop needs the same non-empty rows scored by both models")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    vocabulary = {
        label: i for i, label in enumerate(sorted({*y_true, *champion_pred, *candidate_pred, *labels}))
    }
    true = np.array([vocabulary[x] for x in y_true])
    champ = np.array([vocabulary[x] for x in champion_pred])
    cand = np.array([vocabulary[x] for x in candidate_pred])
    wanted = np.array([vocabulary[x] for x in labels])
    point = float((_macro_f1(true[None], champ[None], wanted) - _macro_f1(true[None], cand[None], wanted))[0])
    drops = np.empty(resamples)
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, 250):  # chunks bound memory: 250 x 400 rows x 77 labels
        idx = rng.integers(0, n, size=(min(250, resamples - start), n))
        drops[start : start + len(idx)] = _macro_f1(true[idx], champ[idx], wanted) - _macro_f1(
            true[idx], cand[idx], wanted
        )
    lower = float(np.quantile(drops, 1.0 - confidence))
    return DropInterval(drop=point * 100.0, lower=lower * 100.0, confidence=confidence, rows=n)
