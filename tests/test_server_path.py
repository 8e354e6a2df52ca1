"""The bigger world by configuration only: MLflow on PostgreSQL, directly and behind `mlflow server`.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth), which these machines and `.ci/run` provide. Each
test works in a database of its own, created and dropped here, so runs never see each other.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from tests import mlflow_servers

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_database():
    with mlflow_servers.pg_database() as uri:
        yield uri


def _drop(tmp_path: Path) -> Path:
    path = tmp_path / "drop.csv"
    texts = [f"where is my order number {i}" for i in range(20)] + [
        f"reset password please {i}" for i in range(20)
    ]
    pd.DataFrame({"text": texts, "label": ["track_order"] * 20 + ["reset_password"] * 20}).to_csv(
        path, index=False
    )
    return path


def _check_lineage(tracking_uri: str, run_id: str, snapshot: str) -> None:
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri).get_run(run_id)
    names = sorted(d.dataset.name for d in run.inputs.dataset_inputs)
    assert names == [f"{snapshot}/eval", f"{snapshot}/golden", f"{snapshot}/train"]
    assert run.data.metrics["accepted"] == 40.0


def test_ingest_logs_to_mlflow_on_postgresql(pg_database, tmp_path, monkeypatch):
    from tuneloop.config import load_settings
    from tuneloop.registry.store import Registry
    from tuneloop.steps.ingest import ingest_step

    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELOOP_TRACKING_URI", pg_database)
    monkeypatch.setenv("TUNELOOP_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    settings = load_settings()
    assert settings.resolved_tracking_uri == pg_database

    result = ingest_step(settings, [_drop(tmp_path)])
    _check_lineage(pg_database, result["mlflow_run_id"], result["snapshot"])
    assert not (tmp_path / "home" / "mlflow.db").exists(), "fell back to SQLite"

    # The registry lives in PostgreSQL too: aliases and tags round-trip through it.
    registry = Registry(settings)
    info = registry.register(result["mlflow_run_id"], "snapshot", {"approval": "pending"})
    registry.set_alias("challenger", info.version)
    assert registry.alias("challenger").version == info.version
    assert Registry(settings).get_version(info.version).approval == "pending"
    _check_lock(settings)


def _check_lock(settings) -> None:
    """Registry.lock works on this store: a second holder waits, names the first, then gets it."""
    from tuneloop.registry.store import Registry, RegistryError

    first, second = Registry(settings), Registry(settings)
    waits = pytest.raises(RegistryError, match="held by")
    with first.lock("aliases") as holder, waits as caught, second.lock("aliases", timeout_s=0.5):
        pass
    assert holder in str(caught.value)
    with second.lock("aliases", timeout_s=5) as holder:
        assert second.client.get_registered_model("tuneloop-intent.lock.aliases").tags["holder"] == holder


def test_ingest_through_an_mlflow_server_backed_by_postgresql(pg_database, tmp_path, monkeypatch):
    from tuneloop.config import load_settings
    from tuneloop.steps.ingest import ingest_step

    artifacts = ("--artifacts-destination", str(tmp_path / "server-artifacts"))
    with mlflow_servers.mlflow_server(pg_database, *artifacts) as url:
        monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("TUNELOOP_TRACKING_URI", url)
        result = ingest_step(load_settings(), [_drop(tmp_path)])
        _check_lineage(url, result["mlflow_run_id"], result["snapshot"])
        _check_lock(load_settings())
        # Artifacts went through the server (proxied), not to the client's disk.
        assert list((tmp_path / "server-artifacts").rglob("manifest.json"))
