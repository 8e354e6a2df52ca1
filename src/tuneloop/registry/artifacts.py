"""A run's artifact files: list them with their sizes, and delete some (the adapter `tuneloop gc` uses).

Listing goes through `MlflowClient.list_artifacts`, one call per folder, so it works the same on a
local store and through `mlflow server --serve-artifacts` (the server lists its S3 bucket).
Deleting goes through MLflow's artifact repository for the run's artifact URI: the local one
removes the file, the S3 one deletes the object, and the `mlflow-artifacts:` (HTTP) one sends
DELETE to the server, which deletes from its own destination (S3 included). A repository that does
not implement deletion inherits a silent no-op from MLflow's base class, so every deletion is
checked by listing again, and a file still there raises.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import Any

from tuneloop.registry.client import RegistryClient, RegistryError


class ArtifactFiles(RegistryClient):
    """Run artifacts as files: run-relative path -> size in bytes."""

    def run_files(self, run_id: str, roots: Iterable[str] = ("",)) -> dict[str, int]:
        """Every file under each run-relative folder of `roots` ("" for the whole run), with its size."""
        from mlflow.exceptions import MlflowException

        found: dict[str, int] = {}
        try:
            for root in roots:
                pending = [root or None]
                while pending:
                    folder = pending.pop()
                    for item in self.client.list_artifacts(run_id, folder):
                        if item.is_dir:
                            pending.append(item.path)
                        else:
                            found[item.path] = int(item.file_size or 0)
        except MlflowException as exc:
            raise self._failed(f"listing the artifacts of run {run_id}", exc) from exc
        return found

    def delete_run_files(self, run_id: str, paths: Iterable[str]) -> None:
        """Delete run-relative files; one already gone is fine. Raises RegistryError when a file is
        still listed afterwards (a store that cannot delete)."""
        from mlflow.exceptions import MlflowException
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        paths = list(paths)
        if not paths:
            return
        with self._writing(f"deleting artifacts of run {run_id}"):
            try:
                uri = self.client.get_run(run_id).info.artifact_uri
            except MlflowException as exc:
                raise self._failed(f"reading run {run_id}", exc) from exc
            repo = get_artifact_repository(uri)
            for path in paths:
                self._delete_one(repo, path)
        folders = sorted({posixpath.dirname(p) for p in paths})
        left = sorted(set(paths) & set(self.run_files(run_id, folders)))
        if left:
            raise RegistryError(
                f"the artifact store of run {run_id} ({type(repo).__name__}) still lists {left} after "
                "deleting them: it may not implement deletion. The version stays tagged as collected; "
                "remove the files by hand or run gc again."
            )

    def _delete_one(self, repo: Any, path: str) -> None:
        """One file, through the repository (the unit a killed gc is tested between)."""
        repo.delete_artifacts(path)
