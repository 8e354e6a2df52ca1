"""Flow `ingest`: pick up new labelled files, validate, quarantine, de-duplicate, cut a snapshot.

Cutting a snapshot emits the Prefect event `tuneloop.data.landed` (resource
`tuneloop.snapshot.<id>`, payload: snapshot, rows accepted), which the `continual` deployment's
trigger answers (flows/deploy.py); whether that is enough rows is decided there, in our code.

Safe to retry and to schedule often: ingest is idempotent (files are recognised by content hash),
a killed run leaves no partial snapshot, files still being written wait for a later run, and a
snapshot whose MLflow lineage failed to log is logged by the task's retry or the next run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from flows.events import DATA_LANDED
from tuneloop.config import load_settings
from tuneloop.steps.exclusions import exclude_step
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.privacy import redact_check


@task(name="ingest-files", retries=2, retry_delay_seconds=10)
def ingest_files(paths: list[str]) -> dict[str, Any]:
    return ingest_step(load_settings(), [Path(p) for p in paths])


@flow(name="ingest", log_prints=True)
def ingest_flow(paths: list[str] | None = None) -> dict[str, Any]:
    """Ingest the given files or folders, or the landing folder when none are given."""
    result = ingest_files(paths or [])
    get_run_logger().info(result["message"])
    if result["snapshot"]:
        emit_event(
            event=DATA_LANDED,
            resource={"prefect.resource.id": f"tuneloop.snapshot.{result['snapshot']}"},
            payload={"snapshot": result["snapshot"], "rows": result["accepted"]},
        )
    return result


@task(name="exclude-snapshot")
def exclude_task(snapshot: str, reason: str, by: str | None, undo: bool) -> dict[str, Any]:
    return exclude_step(load_settings(), snapshot, reason, by=by, undo=undo)


@flow(name="exclude", log_prints=True)
def exclude_flow(snapshot: str, reason: str, by: str | None = None, undo: bool = False) -> dict[str, Any]:
    """Keep a snapshot out of every later round (or let it back with `undo`): `tuneloop exclude`."""
    result = exclude_task(snapshot, reason, by, undo)
    get_run_logger().info(f"{snapshot}: excluded now {result['excluded_now']}")
    return result


class PersonalDataFound(RuntimeError):
    """The scan found personal data: the run fails, so an automation on failed runs tells someone."""


@task(name="scan-for-personal-data")
def redact_check_task() -> dict[str, Any]:
    return redact_check(load_settings())


@flow(name="redact-check", log_prints=True)
def redact_check_flow() -> dict[str, Any]:
    """Scan snapshots, quarantine and landing for personal data: `tuneloop redact --check`.

    Counts per file and entity, never the values. Fails when anything is found (the CLI exits 1).
    """
    result = redact_check_task()
    get_run_logger().info(result["message"])
    if result["files"]:
        raise PersonalDataFound(result["message"])
    return result


if __name__ == "__main__":
    ingest_flow()
