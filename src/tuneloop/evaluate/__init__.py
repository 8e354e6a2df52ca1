"""Evaluate a candidate: offline metrics, reports per set, comparison with the champion, gates, plots.

Importing this package is cheap: Hugging Face `evaluate` (about 5 s to import) loads on the first
`score` call, and matplotlib only with `tuneloop.evaluate.plots`. No torch anywhere: the model comes in
as a `predict_fn(texts) -> labels`.
"""

from tuneloop.evaluate.gates import GateCheck, GateDecision, GateThresholds, decide_gates
from tuneloop.evaluate.metrics import LabelScores, Scores, load_metric, score
from tuneloop.evaluate.report import BackwardTransfer, EvalReport, backward_transfer, build_report

__all__ = [
    "BackwardTransfer",
    "EvalReport",
    "GateCheck",
    "GateDecision",
    "GateThresholds",
    "LabelScores",
    "Scores",
    "backward_transfer",
    "build_report",
    "decide_gates",
    "load_metric",
    "score",
]
