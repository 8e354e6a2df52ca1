"""The pyfunc of a registered tuneloop version, as models-from-code: MLflow runs this file to load it.

`log_round` saves it into the version's folder with a `model_config` naming the registered model and
the run; the work (verifying every file, choosing ONNX INT8, ONNX fp32 or PyTorch from the version's
tags) is in `tuneloop.steps.mlflow_model`, so this file stays what MLflow needs and nothing is pickled.
MLflow runs this file before `load_context` can check anything, this file included: load through
`tuneloop.model.load`, which verifies the whole folder first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

# MLflow runs the copy of this file inside the downloaded model folder, so its parent is that folder.
MODEL_DIR = Path(__file__).resolve().parent


class TuneloopClassifier(PythonModel):
    """Texts in; label, score and top_k [{label, score}] out. `backend` says what it runs on."""

    def __init__(self) -> None:
        self.loaded: Any = None

    @property
    def backend(self) -> str | None:
        """ "onnx-int8", "onnx-fp32" or "torch" once loaded (logged, with why better ones stood aside)."""
        return self.loaded.backend if self.loaded is not None else None

    def load_context(self, context: Any) -> None:
        from tuneloop.steps.mlflow_model import load_version

        self.loaded = load_version(MODEL_DIR, context.model_config)

    # `pd.DataFrame`: what MLflow hands over after checking the signature (a type hint it accepts
    # without inferring a second signature from it).
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from tuneloop.steps.mlflow_model import read_texts, score_texts

        top_k = (params or {}).get("top_k") or context.model_config.get("top_k", 3)
        return score_texts(self.loaded, read_texts(model_input), int(top_k))


mlflow.models.set_model(TuneloopClassifier())
