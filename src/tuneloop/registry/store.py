"""The MLflow adapter: the one place that talks to the tracking server and model registry.

The registry is the single source of truth for what serves. State is carried by:
- aliases on the registered model: `champion` (serving), `canary` (serving a share), `challenger`
  (newest candidate that passed the gates), `previous` (the champion before the last promotion);
- tags on each model version: `approval` (pending / approved / rejected), `gate` (passed / failed),
  `data_snapshot`, `parent_version`, `base_model`, `round_key`, checksums, and who did what when.

Everything else in tuneloop reads and writes that state through `Registry`, so pointing at an MLflow
server on PostgreSQL instead of SQLite is a URI change, nothing more. It is one class in parts:

    client.py     the connection, errors that say what to do, VersionInfo
    versions.py   versions and their tags, audit events
    aliases.py    aliases and the cross-process lock they move under
    downloads.py  downloads verified against the recorded checksums
    runs.py       experiments, and the lineage runs of snapshots
    artifacts.py  a run's files with their sizes, and deleting some (`tuneloop gc`)
"""

from __future__ import annotations

from tuneloop.registry.aliases import LEASE_S, AliasStore
from tuneloop.registry.artifacts import ArtifactFiles
from tuneloop.registry.client import (
    ALIASES,
    APPROVAL_STATES,
    RegistryError,
    VersionInfo,
    checksums,
    current_user,
    is_not_found,
    is_refused,
    now_iso,
)
from tuneloop.registry.downloads import Downloads
from tuneloop.registry.runs import RunLog, log_snapshot_inputs

__all__ = [
    "ALIASES",
    "APPROVAL_STATES",
    "LEASE_S",
    "Registry",
    "RegistryError",
    "VersionInfo",
    "checksums",
    "current_user",
    "is_not_found",
    "is_refused",
    "log_snapshot_inputs",
    "now_iso",
]


class Registry(Downloads, AliasStore, RunLog, ArtifactFiles):
    """Thin wrapper over MlflowClient with the operations the loop needs."""
