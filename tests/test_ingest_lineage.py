"""Snapshot lineage in MLflow is retried until done, and logged exactly once per snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tuneloop.config import Settings
from tuneloop.data.ledger import lineage_pending
from tuneloop.registry.store import Registry
from tuneloop.steps.ingest import LineageError, ingest_config, ingest_step


class UnreachableRegistry(Registry):
    """The MLflow store goes away while a snapshot's lineage is logged."""

    def log_snapshot(
        self, summary: dict[str, Any], manifest_dir: Path, quarantine_report: Path | None
    ) -> str:
        raise ConnectionError("MLflow tracking server unreachable")


class CrashAfterRunRegistry(Registry):
    """The run is made, then the process dies before the snapshot is recorded as logged."""

    def log_snapshot(
        self, summary: dict[str, Any], manifest_dir: Path, quarantine_report: Path | None
    ) -> str:
        super().log_snapshot(summary, manifest_dir, quarantine_report)
        raise SystemExit("killed after the run was made")


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home)


def drop(tmp_path: Path, name: str, texts: list[str]) -> Path:
    path = tmp_path / name
    pd.DataFrame({"text": texts, "label": ["track_order"] * len(texts)}).to_csv(path, index=False)
    return path


def ingest_runs(registry: Registry, settings: Settings) -> dict[str, list[str]]:
    experiment = registry.experiment_id(settings.data_experiment)
    found: dict[str, list[str]] = {}
    for run in registry.client.search_runs([experiment]):
        found.setdefault(run.data.tags["data_snapshot"], []).append(run.info.status)
    return {sid: sorted(statuses) for sid, statuses in found.items()}


def test_failed_lineage_is_retried_by_the_next_ingest(settings: Settings, tmp_path: Path) -> None:
    cfg = ingest_config(settings)
    first = drop(tmp_path, "a.csv", ["where is my parcel", "has it shipped"])
    with pytest.raises(LineageError, match="snap-0001 is cut.*retried on the next ingest"):
        ingest_step(settings, [first], registry=UnreachableRegistry(settings))
    assert lineage_pending(cfg) == ["snap-0001"]  # the snapshot is cut; its lineage is owed

    registry = Registry(settings)
    assert ingest_runs(registry, settings) == {}
    # The same file again: nothing new to ingest, yet the pending lineage is logged first.
    again = ingest_step(settings, [first], registry=registry)
    assert (again["snapshot"], again["skipped_files"]) == (None, [str(first)])
    assert ingest_runs(registry, settings) == {"snap-0001": ["FINISHED"]}
    assert lineage_pending(cfg) == []

    later = ingest_step(settings, [drop(tmp_path, "b.csv", ["any news on my order", "track my box"])])
    assert later["snapshot"] == "snap-0002" and later["mlflow_run_id"]
    assert ingest_runs(registry, settings) == {"snap-0001": ["FINISHED"], "snap-0002": ["FINISHED"]}


def test_a_crash_after_the_run_is_made_does_not_make_a_second_run(settings: Settings, tmp_path: Path) -> None:
    cfg = ingest_config(settings)
    with pytest.raises(SystemExit):
        ingest_step(
            settings,
            [drop(tmp_path, "a.csv", ["where is my parcel"])],
            registry=CrashAfterRunRegistry(settings),
        )
    assert lineage_pending(cfg) == ["snap-0001"]

    registry = Registry(settings)
    experiment = registry.experiment_id(settings.data_experiment)
    (made,) = registry.client.search_runs([experiment])
    # A later attempt that died half-way left an unfinished run with the same tags: it is replaced.
    tags = {"data_snapshot": "snap-0001", "batch": made.data.tags["batch"]}
    registry.client.create_run(experiment, tags=tags)
    assert ingest_runs(registry, settings) == {"snap-0001": ["FINISHED", "RUNNING"]}

    again = ingest_step(settings, [tmp_path / "a.csv"], registry=registry)  # nothing new to read
    assert again["skipped_files"] == [str(tmp_path / "a.csv")]
    assert ingest_runs(registry, settings) == {"snap-0001": ["FINISHED"]}
    assert [r.info.run_id for r in registry.client.search_runs([experiment])] == [made.info.run_id]
    assert lineage_pending(cfg) == []
