"""Scores for one labelled set: accuracy, macro-F1, per-label F1 and a confusion matrix.

Accuracy and F1 go through Hugging Face `evaluate`, using the metric modules this package ships in
`metrics/<name>/<name>.py` (loaded by path, so no Hub access is needed); the confusion matrix comes
from scikit-learn. `evaluate` costs about 5 s to import, so it is imported on first use only.

(This module and the `metrics/` folder beside it share a name on purpose: the folder has no
`__init__.py`, and Python prefers a module file over such a folder, so `tuneloop.evaluate.metrics` is
always this file; the folder is package data, read by path.)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
# Short names the rest of the loop uses, mapped to the packaged module folders.
METRIC_MODULES = {"accuracy": "tuneloop_accuracy", "f1": "tuneloop_f1"}


class LabelScores(BaseModel):
    """One label's scores on one set."""

    model_config = ConfigDict(frozen=True)

    f1: float = Field(description="F1 of this label, 0 when it has no support and no predictions.")
    precision: float = Field(description="Share of predictions of this label that were right.")
    recall: float = Field(description="Share of this label's rows predicted as it.")
    support: int = Field(description="Rows whose true label is this one.")


class Scores(BaseModel):
    """Scores of one model on one labelled set. Plain data: JSON-serialisable for MLflow."""

    model_config = ConfigDict(frozen=True)

    labels: list[str] = Field(description="Label order used by `confusion` and `per_label`.")
    n: int = Field(description="Rows scored.")
    accuracy: float = Field(description="Share of rows predicted right.")
    macro_f1: float = Field(description="Unweighted mean F1 over the labels present in y_true.")
    per_label: dict[str, LabelScores] = Field(description="Scores per label, for every label.")
    confusion: list[list[int]] = Field(
        description="Counts; rows are true labels, columns predicted labels, both in `labels` order."
    )
    # Per row, in the set's order: what the paired bootstrap of the gates resamples
    # (evaluate/uncertainty.py). Empty in reports written before it existed.
    y_true: list[str] = Field(default_factory=list, description="True label of each row, in order.")
    y_pred: list[str] = Field(default_factory=list, description="Predicted label of each row, in order.")

    def macro_f1_over(self, labels: list[str]) -> float:
        """Unweighted mean F1 over `labels` (same definition as `macro_f1`, on a chosen subset)."""
        if not labels:
            raise ValueError("macro_f1_over needs at least one label")
        return sum(self.per_label[label].f1 for label in labels) / len(labels)

    def predicted_labels(self) -> list[str]:
        """Labels predicted at least once in this set (non-empty confusion column), in `labels` order."""
        return [label for j, label in enumerate(self.labels) if any(row[j] for row in self.confusion)]

    def supported_labels(self, min_support: int = 1) -> list[str]:
        """Labels with at least `min_support` rows in this set, in `labels` order."""
        return [label for label in self.labels if self.per_label[label].support >= min_support]


def metric_path(name: str) -> Path:
    """Folder of a packaged metric module; `name` is a short name ("f1") or a folder name."""
    folder = METRIC_MODULES.get(name, name)
    path = METRICS_DIR / folder
    if not (path / f"{folder}.py").is_file():
        known = ", ".join(sorted(METRIC_MODULES))
        raise ValueError(f"no packaged metric {name!r} under {METRICS_DIR} (known: {known})")
    return path


_LOADED = threading.local()


def load_metric(name: str) -> Any:
    """Load a packaged metric module with `evaluate.load(<folder>)`; cached per name and thread.

    Works under HF_HUB_OFFLINE=1: a local folder never consults the Hub. `keep_in_memory` keeps
    evaluate from writing an Arrow cache file per `compute` call. Per thread, because a metric
    object holds the Arrow writer of its current `compute`: two rounds scoring at once in one
    process (two projects) closed each other's writer ("I/O operation on closed file").
    """
    import evaluate

    cached: dict[str, Any] = _LOADED.__dict__.setdefault("metrics", {})
    if name not in cached:
        cached[name] = evaluate.load(str(metric_path(name)), keep_in_memory=True)
    return cached[name]


def score(y_true: list[str], y_pred: list[str], labels: list[str]) -> Scores:
    """Score predictions against true labels.

    `labels` fixes the order of per-label results and of the confusion matrix; pass the union of every
    label either model might see, so candidate and champion scores line up. Every label in `y_true`
    and `y_pred` must be in it (a stray label is a wiring bug, and the confusion matrix would silently
    drop it).

    macro-F1 averages over the labels present in `y_true` only: a label with no rows in this set has
    F1 0 by definition (recall 0/0 counted as 0), and counting it would drag macro-F1 down for
    reasons that have nothing to do with the model, e.g. a golden set that predates a new label.
    Such labels still appear in `per_label`, with support 0.
    """
    from sklearn.metrics import confusion_matrix

    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("cannot score an empty set")
    if len(set(labels)) != len(labels):
        raise ValueError("labels contains duplicates")
    known = set(labels)
    stray = sorted((set(y_true) | set(y_pred)) - known)
    if stray:
        raise ValueError(f"labels not in the label list: {stray[:10]}; pass the union of all label sets")

    seen = set(y_true)
    present = [label for label in labels if label in seen]
    accuracy = load_metric("accuracy").compute(predictions=y_pred, references=y_true)["accuracy"]
    f1 = load_metric("f1")
    macro = f1.compute(predictions=y_pred, references=y_true, labels=present, average="macro")["f1"]
    each = f1.compute(predictions=y_pred, references=y_true, labels=labels, average=None)
    per_label = {
        label: LabelScores(
            f1=each["f1"][i],
            precision=each["precision"][i],
            recall=each["recall"][i],
            support=each["support"][i],
        )
        for i, label in enumerate(labels)
    }
    confusion = confusion_matrix(y_true, y_pred, labels=labels)
    return Scores(
        labels=list(labels),
        n=len(y_true),
        accuracy=float(accuracy),
        macro_f1=float(macro),
        per_label=per_label,
        confusion=confusion.tolist(),
        y_true=list(y_true),
        y_pred=list(y_pred),
    )
