"""Step: ingest files into a snapshot, and log the snapshot to MLflow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop.config import Settings
from tuneloop.data.ingest import IngestConfig, ingest


def ingest_config(settings: Settings) -> IngestConfig:
    return IngestConfig(
        home=settings.home_dir,
        text_column=settings.text_column,
        label_column=settings.label_column,
        max_text_chars=settings.max_text_chars,
        label_pattern=settings.label_pattern,
        eval_fraction=settings.eval_fraction,
        golden_per_label=settings.golden_per_label,
        seed=settings.seed,
    )


def ingest_step(
    settings: Settings,
    paths: list[Path],
    progress: Callable[[str, int, int], None] | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Ingest files (or the landing folder), and log a cut snapshot to MLflow as dataset inputs."""
    summary = ingest(paths, ingest_config(settings), progress=progress)
    result = summary.model_dump(mode="json")
    result["mlflow_run_id"] = None
    if summary.snapshot and track:
        from tuneloop.registry.store import Registry

        report = Path(summary.quarantine_report) if summary.quarantine_report else None
        result["mlflow_run_id"] = Registry(settings).log_snapshot(
            result, settings.snapshots_dir / summary.snapshot, report
        )
    return result
