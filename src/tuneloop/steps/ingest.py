"""Step: ingest files into a snapshot, and log every snapshot's lineage to MLflow until it is logged.

Lineage is retried until done. A committed snapshot is pending until `ledger/lineage/<id>.json`
records its MLflow run (see `data/ingest.py`), so a kill or an MLflow outage after the commit can
not lose it: every ingest, even one with nothing new to read, first logs whatever is pending, then
ingests, then logs the snapshot it cut. A failure to log fails the step loudly (`LineageError`)
while the snapshot stays cut. The MLflow run is found before it is made (tags `data_snapshot` and
`batch`, the batch id being unique), so a kill between making the run and recording it never makes
a second run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config import Settings
from tuneloop.data import snapshot as snap
from tuneloop.data.ingest import IngestConfig, IngestError, ingest
from tuneloop.data.ledger import ingest_lock, lineage_pending, mark_lineage_logged

if TYPE_CHECKING:
    from tuneloop.registry.store import Registry


class LineageError(IngestError):
    """A cut snapshot's lineage could not be logged to MLflow; it stays pending for the next ingest."""


def ingest_config(settings: Settings) -> IngestConfig:
    return IngestConfig(
        home=settings.data_dir,
        text_column=settings.text_column,
        label_column=settings.label_column,
        max_text_chars=settings.max_text_chars,
        label_pattern=settings.label_pattern,
        eval_fraction=settings.eval_fraction,
        golden_per_label=settings.golden_per_label,
        seed=settings.seed,
        # Until Settings has the field (config.py is not this stage's file), the default holds.
        settle_seconds=settings.landing_settle_seconds,
    )


def find_snapshot_run(registry: Registry, snapshot_id: str, batch: str) -> str | None:
    """The finished ingest run of this snapshot and batch, if one exists.

    A run left unfinished by a killed or failed attempt holds part of the lineage: it is deleted
    (MLflow keeps it in the trash) so that the attempt that follows leaves exactly one run.
    """
    from mlflow.entities import ViewType

    experiment = registry.experiment_id(registry.settings.data_experiment)
    runs = registry.client.search_runs(
        [experiment],
        filter_string=f"tags.data_snapshot = '{snapshot_id}' and tags.batch = '{batch}'",
        run_view_type=ViewType.ACTIVE_ONLY,
    )
    finished = [r.info.run_id for r in runs if r.info.status == "FINISHED"]
    for run in runs:
        if run.info.status != "FINISHED":
            registry.client.delete_run(run.info.run_id)
    return str(finished[0]) if finished else None


def log_pending_lineage(cfg: IngestConfig, registry: Registry) -> dict[str, str]:
    """Log every pending snapshot to MLflow, oldest first; return {snapshot id: run id} logged now.

    Runs under the ingest lock, so two ingests never log the same snapshot twice.
    """
    logged: dict[str, str] = {}
    with ingest_lock(cfg.home):
        for snapshot_id in lineage_pending(cfg):
            summary = snap.load_manifest(cfg.snapshots_dir, snapshot_id).batch
            report = Path(summary["quarantine_report"]) if summary.get("quarantine_report") else None
            try:
                run_id = find_snapshot_run(registry, snapshot_id, summary["batch"])
                if run_id is None:
                    run_id = registry.log_snapshot(summary, cfg.snapshots_dir / snapshot_id, report)
            except Exception as exc:  # any failure of the store: the snapshot stays pending
                raise LineageError(
                    f"snapshot {snapshot_id} is cut and safe, but logging its lineage to MLflow failed "
                    f"({type(exc).__name__}: {exc}). Lineage will be retried on the next ingest: run "
                    "`tuneloop ingest` again once MLflow is reachable (with no new files it only logs "
                    "what is pending)."
                ) from exc
            mark_lineage_logged(cfg, snapshot_id, run_id)
            logged[snapshot_id] = run_id
    return logged


def ingest_step(
    settings: Settings,
    paths: list[Path],
    progress: Callable[[str, int, int], None] | None = None,
    track: bool = True,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Ingest files (or the landing folder); log pending and newly cut snapshots to MLflow.

    `registry` is the MLflow adapter (default: one built from `settings`); tests pass their own.
    With `track=False` nothing is logged, and the snapshots stay pending for a later tracked ingest.
    """
    cfg = ingest_config(settings)
    if track and registry is None:
        from tuneloop.registry.store import Registry

        registry = Registry(settings)
    if track and registry is not None:
        log_pending_lineage(cfg, registry)
    from tuneloop.steps.privacy import redactor_for, removes_private_landing_files

    cfg = replace(cfg, remove_private_landing_files=removes_private_landing_files(settings))
    summary = ingest(paths, cfg, progress=progress, redactor=redactor_for(settings))
    result = summary.model_dump(mode="json")
    result["mlflow_run_id"] = None
    if track and registry is not None:
        logged = log_pending_lineage(cfg, registry)
        result["mlflow_run_id"] = logged.get(summary.snapshot) if summary.snapshot else None
    return result
