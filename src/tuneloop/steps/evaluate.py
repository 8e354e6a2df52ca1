"""Step: score any registered version on any labelled file (same column mapping as ingest)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tuneloop.config import Settings
from tuneloop.data.readers import read_file
from tuneloop.data.validate import CleanRow, Rules, check_record
from tuneloop.registry.store import Registry


def read_labelled(settings: Settings, path: Path) -> tuple[list[CleanRow], dict[str, int]]:
    """Valid rows of a labelled file, and a count per reason of the rows that were not usable."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    read = read_file(path, settings.text_column, settings.label_column)
    if read.error:
        raise ValueError(f"cannot read {path}: {read.error}: {read.detail}")
    rules = Rules(settings.max_text_chars, settings.label_pattern)
    label_re = rules.compiled()
    rows: list[CleanRow] = []
    skipped: Counter[str] = Counter()
    for record in read.records:
        result = check_record(record, rules, label_re)
        if isinstance(result, CleanRow):
            rows.append(result)
        else:
            skipped[result[0]] += 1
    if not rows:
        raise ValueError(f"{path} has no usable rows (skipped: {dict(skipped)})")
    return rows, dict(skipped)


def evaluate_step(settings: Settings, version: str, data: Path) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label F1 and the confusion matrix of `version` on `data`."""
    import tempfile

    from tuneloop.evaluate.metrics import score
    from tuneloop.steps.round import predictor

    rows, skipped = read_labelled(settings, data)
    registry = Registry(settings)
    info = registry.get_version(version)
    with tempfile.TemporaryDirectory(prefix="tuneloop-eval-") as tmp:
        adapter = registry.download(info.version, "adapter", Path(tmp))
        from tuneloop.train.model import read_labels

        model_labels = read_labels(adapter)
        predict = predictor(adapter, settings.max_length)
        texts = [r.text for r in rows]
        truth = [r.label for r in rows]
        predicted = predict(texts)
    labels = model_labels + sorted(set(truth) - set(model_labels))
    scores = score(truth, predicted, labels)
    unknown = sorted(set(truth) - set(model_labels))
    return {
        "version": info.version,
        "data": str(data),
        "rows": len(rows),
        "skipped": skipped,
        "unknown_labels": unknown,
        "accuracy": scores.accuracy,
        "macro_f1": scores.macro_f1,
        "per_label": {k: v.model_dump() for k, v in scores.per_label.items()},
        "labels": scores.labels,
        "confusion": scores.confusion,
    }
