"""A lock taken while its last holder releases it: MLflow's answer to that race is not an error.

MLflow's SQL stores meet a duplicate registered-model name with an IntegrityError and then read the
existing model back to say RESOURCE_ALREADY_EXISTS; if the holder deleted it in between, the read
answers RESOURCE_DOES_NOT_EXIST instead. Seen with 8 writers on SQLite
(tests/test_registry_postgres_concurrency.py); made deterministic here with a client that answers
so once.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from tuneloop.registry.lock import registry_lock


class ReleasedMeanwhile(MlflowClient):
    """The first create loses to a holder that is gone by the time MLflow reads its model back."""

    raced = False

    def create_registered_model(self, name, *args, **kwargs):
        if not self.raced:
            self.raced = True
            raise MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)
        return super().create_registered_model(name, *args, **kwargs)


def test_a_lock_released_during_our_create_is_taken_not_failed(tmp_path):
    client = ReleasedMeanwhile(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with registry_lock(client, "m.lock.aliases", timeout_s=5) as holder:
        assert client.raced
        assert client.get_registered_model("m.lock.aliases").tags["holder"] == holder
