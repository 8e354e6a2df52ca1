"""Secrets never printed: URIs masked, and the values of MLflow's and AWS's secret variables too.

Fast (no server): tests/test_auth_server.py proves the same through the CLI against a real
`mlflow server --app-name basic-auth`.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
    UNAUTHENTICATED,
)

from tuneloop.config import load_settings, mask_secrets
from tuneloop.registry.store import Registry, is_refused


def test_mask_secrets_masks_uris_and_secret_variables(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-long")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-s3cret-key")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "abc")  # too short to mask without mangling text
    text = "at http://ops:pw@mlflow:5000 with hunter2-long and aws-s3cret-key, abc"
    assert mask_secrets(text) == "at http://ops:****@mlflow:5000 with **** and ****, abc"


def test_a_refusal_says_who_was_sent_and_what_to_set(tmp_path, monkeypatch):
    registry = Registry(load_settings(home=tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-password")
    refused = MlflowException("Permission denied for reader-password", error_code=PERMISSION_DENIED)
    assert is_refused(refused)
    for other in (RESOURCE_DOES_NOT_EXIST, INTERNAL_ERROR):
        assert not is_refused(MlflowException("other", error_code=other))
    message = str(registry._failed("moving the alias 'champion'", refused))
    assert "refused by the MLflow server" in message and "the user 'reader'" in message
    assert "MLFLOW_TRACKING_PASSWORD" in message and "EDIT" in message
    assert "reader-password" not in message

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    anonymous = MlflowException("You are not authenticated", error_code=UNAUTHENTICATED)
    assert "MLFLOW_TRACKING_USERNAME is unset" in str(registry._failed("approving", anonymous))
