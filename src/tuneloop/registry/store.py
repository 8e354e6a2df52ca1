"""The MLflow adapter: the one place that talks to the tracking server and model registry.

The registry is the single source of truth for what serves. State is carried by:
- aliases on the registered model: `champion` (serving), `canary` (serving a share), `challenger`
  (newest candidate that passed the gates), `previous` (the champion before the last promotion);
- tags on each model version: `approval` (pending / approved / rejected), `gate` (passed / failed),
  `data_snapshot`, `parent_version`, `base_model`, `round_key`, checksums, and who did what when.

Everything else in tuneloop reads and writes that state through this class, so pointing at an MLflow
server on PostgreSQL instead of SQLite is a URI change, nothing more.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.config import Settings
from tuneloop.files import sha256_file

ALIASES = ("champion", "canary", "challenger", "previous")
APPROVAL_STATES = ("pending", "approved", "rejected")


class RegistryError(RuntimeError):
    """A registry operation that cannot go ahead; the message says why and what to do."""


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, keyed by relative path (sorted)."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current_user() -> str:
    try:
        return os.environ.get("TUNELOOP_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class VersionInfo:
    """A model version as plain data (what `status` shows and decisions read)."""

    version: str
    run_id: str | None
    source: str
    aliases: list[str]
    tags: dict[str, str]
    created_ms: int

    @property
    def approval(self) -> str:
        return self.tags.get("approval", "pending")

    @property
    def gate_passed(self) -> bool:
        return self.tags.get("gate") == "passed"

    def metric(self, name: str) -> float | None:
        value = self.tags.get(f"metric.{name}")
        return float(value) if value is not None else None


class Registry:
    """Thin wrapper over MlflowClient with the operations the loop needs."""

    def __init__(self, settings: Settings) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.settings = settings
        self.model_name = settings.model_name
        if settings.resolved_tracking_uri.startswith("sqlite:"):
            settings.home_dir.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(settings.resolved_tracking_uri)
        mlflow.set_registry_uri(settings.resolved_registry_uri)
        self.client = MlflowClient(settings.resolved_tracking_uri, settings.resolved_registry_uri)

    # --- experiments and runs ----------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        root = self.settings.resolved_artifact_root
        location = f"{root.rstrip('/')}/{name}" if root else None
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except Exception:  # created concurrently by another process: read it back
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

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
            log_snapshot_inputs(manifest_dir, snapshot_id, contexts=("train", "eval", "golden"))
            mlflow.log_artifact(str(manifest_dir / "manifest.json"), "snapshot")
            if quarantine_report is not None and quarantine_report.is_file():
                mlflow.log_artifact(str(quarantine_report), "quarantine")
            return str(run.info.run_id)

    # --- model versions ----------------------------------------------------------------------
    def ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    self.model_name,
                    description="tuneloop intent classifier. Aliases: champion (serving), canary, "
                    "challenger (passed gates), previous. Approve a version by setting its tag "
                    "approval=approved (or run `tuneloop approve VERSION --by NAME`).",
                )
            except MlflowException:
                self.client.get_registered_model(self.model_name)  # raced: it exists now

    def _info(self, mv: Any) -> VersionInfo:
        return VersionInfo(
            version=str(mv.version),
            run_id=mv.run_id,
            source=mv.source,
            aliases=sorted(getattr(mv, "aliases", []) or []),
            tags=dict(mv.tags or {}),
            created_ms=int(mv.creation_timestamp or 0),
        )

    def get_version(self, version: str | int) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self.client.get_model_version(self.model_name, str(version)))
        except MlflowException as exc:
            raise RegistryError(
                f"{self.model_name} has no version {version}; `tuneloop status` lists the versions."
            ) from exc

    def versions(self) -> list[VersionInfo]:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{self.model_name}'")
        except MlflowException:
            return []
        return sorted((self._info(mv) for mv in found), key=lambda v: int(v.version))

    def find_by_round_key(self, round_key: str) -> VersionInfo | None:
        """The version registered for this (snapshot, parent, config), if any: rounds are idempotent."""
        for info in self.versions():
            if info.tags.get("round_key") == round_key:
                return info
        return None

    def register(self, run_id: str, artifact_path: str, tags: dict[str, str]) -> VersionInfo:
        self.ensure_model()
        mv = self.client.create_model_version(
            self.model_name,
            source=f"runs:/{run_id}/{artifact_path}",
            run_id=run_id,
            tags={k: str(v) for k, v in tags.items()},
        )
        return self.get_version(mv.version)

    def set_tags(self, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), key, str(value))

    # --- aliases -----------------------------------------------------------------------------
    def alias(self, alias: str) -> VersionInfo | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self.client.get_model_version_by_alias(self.model_name, alias))
        except MlflowException:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; tuneloop uses {ALIASES}")
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def clear_alias(self, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):
            self.client.delete_registered_model_alias(self.model_name, alias)

    def aliases(self) -> dict[str, str]:
        return {a: v.version for a in ALIASES if (v := self.alias(a)) is not None}

    # --- artifacts ---------------------------------------------------------------------------
    def download(self, version: str, subpath: str = "", dst: Path | None = None) -> Path:
        """Download (part of) a version's artifacts and return the local folder."""
        import mlflow

        info = self.get_version(version)
        uri = info.source.rstrip("/") + (f"/{subpath}" if subpath else "")
        target = dst or Path(tempfile.mkdtemp(prefix=f"tuneloop-v{version}-"))
        target.mkdir(parents=True, exist_ok=True)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))

    def record_event(self, version: str, event: str, payload: dict[str, Any]) -> None:
        """Append-only audit trail: a tag per event (`event.<time>.<name>`) on the version."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        self.client.set_model_version_tag(
            self.model_name, str(version), f"event.{stamp}.{event}", json.dumps(payload, sort_keys=True)
        )


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
