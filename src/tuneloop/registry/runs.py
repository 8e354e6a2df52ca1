"""MLflow experiments and runs the registry writes for lineage: one run per cut snapshot, and a
snapshot's splits as dataset inputs of whichever run trained on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.registry.client import RegistryClient, RegistryError


class RunLog(RegistryClient):
    """Experiments (found or created) and the ingest run of each snapshot."""

    def experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_experiment_by_name(name)  # None when it does not exist
            if found is not None:
                return str(found.experiment_id)
            root = self.settings.resolved_artifact_root
            location = f"{root.rstrip('/')}/{name}" if root else None
            try:
                return str(self.client.create_experiment(name, artifact_location=location))
            except MlflowException as exc:
                if str(exc.error_code) != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = self.client.get_experiment_by_name(name)  # created concurrently: read it back
            if found is None:
                raise RegistryError(f"experiment {name!r} exists but cannot be read at {self.where}")
            return str(found.experiment_id)
        except MlflowException as exc:
            raise self._failed(f"finding or creating the experiment {name!r}", exc) from exc

    def log_snapshot(
        self, summary: dict[str, Any], manifest_dir: Path, quarantine_report: Path | None
    ) -> str:
        """One MLflow run per cut snapshot, with its splits as dataset inputs (lineage in the UI)."""
        import mlflow

        snapshot_id = summary["snapshot"]
        with mlflow.start_run(
            experiment_id=self.experiment_id(self.settings.data_experiment),
            run_name=f"ingest {snapshot_id}",
            tags={"tuneloop.kind": "ingest", "data_snapshot": snapshot_id, "batch": summary["batch"]},
        ) as run:
            mlflow.log_params(
                {
                    "text_column": self.settings.text_column,
                    "label_column": self.settings.label_column,
                    "eval_fraction": self.settings.eval_fraction,
                    "golden_per_label": self.settings.golden_per_label,
                    "seed": self.settings.seed,
                }
            )
            mlflow.log_metrics(
                {k: float(summary[k]) for k in ("rows", "accepted", "duplicates", "quarantined")}
            )
            # Counts only, per entity: what ingest redacted (the values never reach MLflow).
            personal = summary.get("personal_data", {})
            mlflow.log_metrics({f"personal_data.{entity}": float(n) for entity, n in personal.items()})
            log_snapshot_inputs(manifest_dir, snapshot_id, contexts=("train", "eval", "golden"))
            mlflow.log_artifact(str(manifest_dir / "manifest.json"), "snapshot")
            if quarantine_report is not None and quarantine_report.is_file():
                mlflow.log_artifact(str(quarantine_report), "quarantine")
            return str(run.info.run_id)


def log_snapshot_inputs(snapshots_dir_or_snapshot: Path, snapshot_id: str, contexts: tuple[str, ...]) -> None:
    """Log a snapshot's splits as MLflow dataset inputs of the active run (name = snapshot id)."""
    import warnings

    import mlflow
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    folder = snapshots_dir_or_snapshot
    datasets = []
    for split in contexts:
        path = folder / f"{split}.parquet"
        # object dtype: MLflow's digest compares cell types, which pandas 3's Arrow-backed string
        # columns refuse for an empty frame ("eq not implemented for <class 'type'>").
        frame = pd.read_parquet(path, columns=["text", "label"]).astype(object)
        with warnings.catch_warnings():
            # A file:// source matches MLflow's local-artifact source twice; the choice is right.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            dataset = from_pandas(
                frame, source=path.resolve().as_uri(), name=f"{snapshot_id}/{split}", targets="label"
            )
        datasets.append((dataset, split))
    for dataset, split in datasets:
        mlflow.log_input(dataset, context=split, tags={"data_snapshot": snapshot_id})


def free_path(registry: Any, run_id: str, path: str) -> str:
    """`path` in the run, or `path.2`, `path.3`, ... where files are already there.

    A conversion (`conversions/<key>/`) or a student (`students/<n>L/`) is logged into a new folder:
    a crashed attempt may have left files at the planned path, and a published folder is never
    written into again.
    """
    candidate, n = path, 1
    while registry.client.list_artifacts(run_id, candidate):
        n += 1
        candidate = f"{path}.{n}"
    return candidate
