"""Compress stage: smaller students of a trained classifier, distilled from it and judged against it.

`import tuneloop.compress` is cheap: the torch-backed names below load on first use.

    from tuneloop.compress import choose_layers, build_depth_student, distill, judge_student

Depth students keep some of the teacher's encoder layers (depth.py), may lose the feed-forward
neurons the round's data leans on least (width.py, Torch-Pruning), learn from the teacher's
logits (distillation.py) and are judged against it on plain predictions (judge.py). What they take and
give is plain: a model folder in the layout the convert stage exports, and lists of labels.
"""

from __future__ import annotations

import importlib
from typing import Any

from tuneloop.compress.judge import Predictions, StudentLimits, StudentVerdict, judge_student, macro_f1
from tuneloop.compress.layers import choose_layers

_LAZY = {
    "build_depth_student": "tuneloop.compress.depth",
    "load_teacher": "tuneloop.compress.depth",
    "save_student": "tuneloop.compress.depth",
    "count_parameters": "tuneloop.compress.depth",
    "teacher_depth": "tuneloop.compress.depth",
    "read_labels": "tuneloop.compress.depth",
    "DistillConfig": "tuneloop.compress.distillation",
    "DistillResult": "tuneloop.compress.distillation",
    "distill": "tuneloop.compress.distillation",
    "predict_logits": "tuneloop.compress.distillation",
    "kl_to_teacher": "tuneloop.compress.distillation",
    "prune_ffn": "tuneloop.compress.width",
}

__all__ = [
    "Predictions",
    "StudentLimits",
    "StudentVerdict",
    "choose_layers",
    "judge_student",
    "macro_f1",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuneloop.compress' has no attribute {name!r}")
