"""What serves: loaded models and the immutable bundle that maps aliases to them.

The registry follower builds a new Bundle off the request path and swaps it in with one attribute
assignment; a batch reads the bundle once and uses that object throughout, so a swap can never
give one batch two champions or a half-loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Predictor(Protocol):
    """A loaded classifier: label names in index order and class probabilities for texts."""

    labels: list[str]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """[len(texts), len(labels)] probabilities, each batch padded only to its longest text."""
        ...


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, loaded and warmed by one backend."""

    version: str
    backend: str  # tensorrt, onnx-int8, onnx-fp32 or torch
    predictor: Predictor
    notes: tuple[str, ...] = ()  # why better backends stepped aside
    model: str = "teacher"  # the version's `serves` tag: its own model, or a student ("student-3L")
    # Bytes of the weights the predictor holds (the graph or the parameters): what the memory budget
    # of a many-project service counts (serve/pool.py); 0 when unknown.
    nbytes: int = 0


@dataclass(frozen=True)
class Bundle:
    """Alias -> loaded version, and the canary weight, as one immutable value."""

    champion: LoadedModel | None = None
    canary: LoadedModel | None = None
    canary_weight: float = 0.0
    retained: tuple[LoadedModel, ...] = field(default=())  # old champions kept warm for rollback

    @property
    def effective_weight(self) -> float:
        """The canary weight that applies: none without a canary model."""
        return self.canary_weight if self.canary is not None else 0.0

    def loaded(self) -> dict[str, LoadedModel]:
        """Every loaded model by version (champion, canary, retained)."""
        models = [m for m in (self.champion, self.canary, *self.retained) if m is not None]
        return {m.version: m for m in models}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so large logits cannot overflow."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)
