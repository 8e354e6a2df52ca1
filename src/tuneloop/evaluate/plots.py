"""Figures and tables for an evaluation: confusion matrix, per-label table, backward-transfer bars.

Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no global figure registry to
leak memory in a long-running loop, no display needed, and saving renders with Agg. Functions return
figures; writing them (e.g. as MLflow artifacts) is the caller's job, `save_figure` included. This
module never calls `matplotlib.use` (a process-wide side effect): a bare `Figure` renders PNG through
the Agg canvas whatever the configured backend.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tuneloop.evaluate.metrics import Scores
from tuneloop.evaluate.report import BackwardTransfer, EvalReport, backward_transfer

# Label ticks need about 0.16 inch each at 7 pt: 77 labels -> 12.3 inch of axis, so the figure grows
# with the label count (from 6 inches for 10 labels up to a 20-inch cap) instead of overprinting.
_INCH_PER_LABEL = 0.16
_MIN_INCHES, _MAX_INCHES = 6.0, 20.0
# Writing counts in the cells only stays legible up to about 20 x 20.
_ANNOTATE_UP_TO = 20


def _font_size(n_labels: int) -> float:
    return 9.0 if n_labels <= 20 else 7.0 if n_labels <= 50 else 5.5


def confusion_matrix_figure(scores: Scores, title: str) -> Figure:
    """Row-normalised confusion matrix (each true label's row sums to 1), one tick per label.

    Normalising rows makes a 5-row label and a 50-row label comparable: a cell reads as "share of this
    label's rows predicted as that one". Rows with no support stay at 0. Counts are written in cells
    for up to 20 labels; larger matrices rely on the colour bar.
    """
    labels = scores.labels
    n = len(labels)
    counts = np.asarray(scores.confusion, dtype=float).reshape(n, n)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)

    side = min(_MAX_INCHES, max(_MIN_INCHES, 2.5 + _INCH_PER_LABEL * n))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    font = _font_size(n)
    ax.set_xticks(range(n), labels=labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels=labels, fontsize=font)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(f"{title}\naccuracy {scores.accuracy:.3f}, macro-F1 {scores.macro_f1:.3f}, n={scores.n}")
    if n <= _ANNOTATE_UP_TO:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=font, color=colour
                    )
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true label's rows")
    return fig


def per_label_table(report: EvalReport, champion: EvalReport | None = None) -> pd.DataFrame:
    """One row per label: support and F1 on the new and golden sets, champion golden F1 and the delta.

    Columns: label, support_new, support_golden, f1_new, f1_golden, champion_f1_golden, delta_golden
    (candidate minus champion, in F1 units; NaN where there is no champion or it did not know the
    label, see `EvalReport.known_labels`). Labels come in the order of the report's golden (else new) scores.
    """
    new, golden = report.new, report.golden
    base = golden or new
    if base is None:
        raise ValueError("the report has neither a 'new' nor a 'golden' set")
    champ_golden = champion.golden if champion is not None else None
    known = set(champion.known_labels()) if champion is not None else None
    rows = []
    for label in base.labels:
        f1_golden = golden.per_label[label].f1 if golden is not None else math.nan
        champ_f1 = math.nan
        if champ_golden is not None and label in champ_golden.per_label and (known is None or label in known):
            champ_f1 = champ_golden.per_label[label].f1
        rows.append(
            {
                "label": label,
                "support_new": new.per_label[label].support if new is not None else 0,
                "support_golden": golden.per_label[label].support if golden is not None else 0,
                "f1_new": new.per_label[label].f1 if new is not None else math.nan,
                "f1_golden": f1_golden,
                "champion_f1_golden": champ_f1,
                "delta_golden": f1_golden - champ_f1,
            }
        )
    return pd.DataFrame(rows)


def backward_transfer_figure(
    transfer: BackwardTransfer | EvalReport,
    champion: EvalReport | None = None,
    title: str = "Backward transfer on the golden set",
    max_drop_points: float | None = None,
) -> Figure:
    """Horizontal bars of candidate-minus-champion golden F1 per label, worst at the top.

    Pass a BackwardTransfer (e.g. `GateDecision.backward_transfer`), or the candidate's and the
    champion's EvalReports to compute one over the labels the champion knew. Bars left of zero (red)
    are forgetting; `max_drop_points` draws the policy's per-label limit as a dashed line.
    """
    if isinstance(transfer, EvalReport):
        if champion is None or transfer.golden is None or champion.golden is None:
            raise ValueError("backward transfer needs a champion and golden scores for both models")
        transfer = backward_transfer(transfer.golden, champion.golden, champion.known_labels())
    items = sorted(transfer.per_label.items(), key=lambda item: item[1])
    labels = [label for label, _ in items]
    points = [delta * 100 for _, delta in items]
    n = max(len(items), 1)
    fig = Figure(figsize=(8.0, min(_MAX_INCHES, max(3.0, 1.5 + 0.2 * n))), layout="constrained")
    ax = fig.add_subplot()
    colours = ["#c0392b" if p < 0 else "#27ae60" for p in points]
    ax.barh(range(len(items)), points, color=colours)
    ax.set_yticks(range(len(items)), labels=labels, fontsize=_font_size(len(items)))
    ax.invert_yaxis()  # worst at the top, where the eye starts
    ax.axvline(0.0, color="black", linewidth=0.8)
    if max_drop_points is not None:
        ax.axvline(-max_drop_points, color="#c0392b", linestyle="--", linewidth=1.0, label="per-label limit")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("golden F1 change vs champion (points)")
    ax.set_title(f"{title}\nmean {transfer.mean * 100:+.1f} points over {len(items)} labels")
    return fig


def save_figure(fig: Figure, path: Path | str, dpi: int = 120) -> Path:
    """Write `fig` to `path` (format from the suffix, e.g. .png), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
