"""Load a registered tuneloop version with MLflow, every file verified before MLflow reads any of it.

    import tuneloop.model
    model = tuneloop.model.load("models:/tuneloop-intent@champion")   # an mlflow PyFuncModel
    model.predict(["I want my money back"])
    tuneloop.model.download("models:/tuneloop-intent/3", Path("v3"))  # then: mlflow models serve -m v3

`mlflow.pyfunc.load_model` on its own parses `MLmodel` and runs the folder's `pyfunc_model.py` before
any check can run; `load` checks those two files with all the others (against `checksums.json`,
itself checked against the version's `checksums_sha256` tag) and only then hands the checked copy to
MLflow. The work is `tuneloop.steps.mlflow_model`'s; this module only names it for users.
"""

from __future__ import annotations

from tuneloop.steps.mlflow_model import download_verified as download
from tuneloop.steps.mlflow_model import load_verified as load

__all__ = ["download", "load"]
