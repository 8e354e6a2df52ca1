"""Accuracy as a Hugging Face `evaluate` module that ships inside tuneloop and loads offline.

`evaluate.load("accuracy")` fetches its script from the Hub, which the loop must not need. This file
is loaded by path (see `tuneloop.evaluate.metrics.load_metric`); evaluate copies it into its module
cache and imports it from there. One import per line: evaluate's dependency scan reads each `import`
line with a regular expression and misreads `import a, b`.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = """tuneloop packaged accuracy: the share of predictions equal to their reference.
Labels may be strings (intent names) or integers (class ids)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str` or `int`): predicted labels.
    references (`list` of `str` or `int`): true labels.
Returns:
    accuracy (`float`): correct / total, in [0, 1].
"""


class TuneloopAccuracy(evaluate.Metric):
    """Accuracy over string or integer labels."""

    def _info(self) -> evaluate.MetricInfo:
        # Two accepted schemas: evaluate tries them in order, so intent names and class ids both work.
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

    def _compute(self, predictions: list, references: list) -> dict:
        return {"accuracy": float(accuracy_score(references, predictions))}
