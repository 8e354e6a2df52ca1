"""Flow `ingest`: pick up new labelled files, validate, quarantine, de-duplicate, cut a snapshot.

Cutting a snapshot emits the Prefect event `tuneloop.data.landed` (resource
`tuneloop.snapshot.<id>` labelled `tuneloop.project`, payload: project, snapshot, rows accepted),
which the trigger of that project's `continual` deployment answers (flows/deploy.py); whether that
is enough rows is decided there, in our code. Every flow takes `project` (default: the default
project) and works on that project's landing folder, snapshots and ledger only.

Safe to retry and to schedule often: ingest is idempotent (files are recognised by content hash),
a killed run leaves no partial snapshot, files still being written wait for a later run, and a
snapshot whose MLflow lineage failed to log is logged by the task's retry or the next run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from flows.events import DATA_LANDED, PROJECT_LABEL
from tuneloop.config import DEFAULT_PROJECT, load_settings
from tuneloop.steps.exclusions import exclude_step
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.privacy import redact_check


@task(name="ingest-files", retries=2, retry_delay_seconds=10)
def ingest_files(paths: list[str], project: str) -> dict[str, Any]:
    return ingest_step(load_settings(project=project), [Path(p) for p in paths])


@flow(name="ingest", log_prints=True)
def ingest_flow(paths: list[str] | None = None, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    """Ingest the given files or folders, or `project`'s landing folder when none are given."""
    result = ingest_files(paths or [], project)
    get_run_logger().info(result["message"])
    if result["snapshot"]:
        emit_event(
            event=DATA_LANDED,
            resource={
                "prefect.resource.id": f"tuneloop.snapshot.{result['snapshot']}",
                PROJECT_LABEL: project,
            },
            payload={"project": project, "snapshot": result["snapshot"], "rows": result["accepted"]},
        )
    return result


@task(name="exclude-snapshot")
def exclude_task(snapshot: str, reason: str, by: str | None, undo: bool, project: str) -> dict[str, Any]:
    return exclude_step(load_settings(project=project), snapshot, reason, by=by, undo=undo)


@flow(name="exclude", log_prints=True)
def exclude_flow(
    snapshot: str, reason: str, by: str | None = None, undo: bool = False, project: str = DEFAULT_PROJECT
) -> dict[str, Any]:
    """Keep a snapshot out of every later round (or let it back with `undo`): `tuneloop exclude`."""
    result = exclude_task(snapshot, reason, by, undo, project)
    get_run_logger().info(f"{snapshot}: excluded now {result['excluded_now']}")
    return result


class PersonalDataFound(RuntimeError):
    """The scan found personal data: the run fails, so an automation on failed runs tells someone."""


@task(name="scan-for-personal-data")
def redact_check_task(project: str) -> dict[str, Any]:
    return redact_check(load_settings(project=project))


@flow(name="redact-check", log_prints=True)
def redact_check_flow(project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    """Scan `project`'s snapshots, quarantine and landing for personal data: `tuneloop redact --check`.

    Counts per file and entity, never the values. Fails when anything is found (the CLI exits 1).
    """
    result = redact_check_task(project)
    get_run_logger().info(result["message"])
    if result["files"]:
        raise PersonalDataFound(result["message"])
    return result


if __name__ == "__main__":
    ingest_flow()
