"""F1 as a Hugging Face `evaluate` module that ships inside tuneloop and loads offline.

Loaded by path (see `tuneloop.evaluate.metrics.load_metric`), never from the Hub. One import per
line: evaluate's dependency scan misreads `import a, b`.
"""

import datasets
import evaluate
from sklearn.metrics import precision_recall_fscore_support

_DESCRIPTION = """tuneloop packaged F1: harmonic mean of precision and recall, macro-averaged or per label.
Labels may be strings (intent names) or integers (class ids)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str` or `int`): predicted labels.
    references (`list` of `str` or `int`): true labels.
    labels (`list`, optional): the labels to score, in the order per-label results come back.
        Default: every label seen in references or predictions, sorted. With average="macro", only
        these labels enter the mean.
    average (`str` or `None`): "macro" (unweighted mean of per-label F1) or None (per label).
Returns:
    average="macro": {"f1": float}
    average=None: {"f1": [...], "precision": [...], "recall": [...], "support": [...]}, in `labels`
    order. A label with no predictions has precision 0; one with no support has recall 0 (no warning).
"""

_AVERAGES = ("macro", None)


class TuneloopF1(evaluate.Metric):
    """Macro or per-label F1 over string or integer labels."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
                datasets.Features(
                    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
                ),
            ],
            homepage="tuneloop (packaged metric)",
        )

    def _compute(
        self,
        predictions: list,
        references: list,
        labels: list | None = None,
        average: str | None = "macro",
    ) -> dict:
        if average not in _AVERAGES:
            raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
        if labels is None:
            labels = sorted(set(references) | set(predictions))
        precision, recall, f1, support = precision_recall_fscore_support(
            references, predictions, labels=list(labels), average=average, zero_division=0
        )
        if average == "macro":
            return {"f1": float(f1)}
        return {
            "f1": [float(v) for v in f1],
            "precision": [float(v) for v in precision],
            "recall": [float(v) for v in recall],
            "support": [int(v) for v in support],
        }
