"""Train stage: continual LoRA rounds on a transformer text classifier.

`import tuneloop.train` is cheap: the torch-backed names below load on first use.

    from tuneloop.train import TrainConfig, train_round, load_classifier, predict_logits, merge_adapter
"""

from __future__ import annotations

import importlib
from typing import Any

from tuneloop.train.config import TrainConfig

_LAZY = {
    "resolve_base_model": "tuneloop.train.base",
    "select_replay": "tuneloop.train.replay",
    "replay_manifest": "tuneloop.train.replay",
    "apply_replay_manifest": "tuneloop.train.replay",
    "build_classifier": "tuneloop.train.model",
    "load_classifier": "tuneloop.train.model",
    "merge_labels": "tuneloop.train.model",
    "read_labels": "tuneloop.train.model",
    "predict_logits": "tuneloop.train.predict",
    "merge_adapter": "tuneloop.train.predict",
    "TrainResult": "tuneloop.train.trainer",
    "train_round": "tuneloop.train.trainer",
}

__all__ = ["TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuneloop.train' has no attribute {name!r}")
