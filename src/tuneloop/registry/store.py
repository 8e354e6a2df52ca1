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
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.config import Settings, mask_secrets, mask_uri
from tuneloop.files import sha256_file
from tuneloop.registry.verify import MANIFEST, checksum_problems, flatten_manifests

ALIASES = ("champion", "canary", "challenger", "previous")
APPROVAL_STATES = ("pending", "approved", "rejected")


# A held lock's lease is renewed every LEASE_S / 3 = 20 s by a thread of its holder, so a long
# critical section (a training round) keeps it; a holder killed with kill -9 blocks the next one for
# at most 60 s. (900 s here once made a controller killed inside an alias move stall every alias move
# for 15 minutes.) Losing it takes a holder stalled for a whole minute; its block then raises.
LEASE_S = 60.0


class RegistryError(RuntimeError):
    """A registry operation that cannot go ahead; the message says why and what to do."""


def is_not_found(exc: Exception) -> bool:
    """Whether an MlflowException means "no such model / version / experiment" (and nothing else).

    MLflow 3 answers RESOURCE_DOES_NOT_EXIST for a missing registered model or version, from the
    SQLAlchemy stores and through the REST API alike. An unset alias is INVALID_PARAMETER_VALUE
    ("alias ... not found"), which also means a malformed request, so aliases are read from the
    registered model (`get_registered_model(name).aliases`) and never judged by that code.
    """
    return str(getattr(exc, "error_code", "")) == "RESOURCE_DOES_NOT_EXIST"


# What an MLflow server with authentication (`mlflow server --app-name basic-auth`) answers when a
# request carries no or wrong credentials (401), or a user without the right (403).
REFUSED_CODES = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def is_refused(exc: BaseException | None) -> bool:
    """Whether an MlflowException is the server refusing who is asking (401 or 403)."""
    return str(getattr(exc, "error_code", "")) in REFUSED_CODES


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
        self.where = mask_uri(settings.resolved_registry_uri)

    def _failed(self, what: str, exc: Exception) -> RegistryError:
        """A registry call that failed for a reason other than "not found": say what and where."""
        detail = mask_secrets(getattr(exc, "message", None) or str(exc))
        if is_refused(exc):
            return RegistryError(f"{what} was refused by the MLflow server {self.where}: {detail}. {_who()}")
        return RegistryError(
            f"{what} failed at the MLflow registry {self.where}: {detail}. Check that the store is "
            "reachable and TUNELOOP_TRACKING_URI / TUNELOOP_REGISTRY_URI are right (`tuneloop "
            "config` prints them), then run the command again."
        )

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """A registry write: a 401/403 becomes a RegistryError saying whose rights to fix."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            if is_refused(exc):
                raise self._failed(what, exc) from exc
            raise

    # --- experiments and runs ----------------------------------------------------------------
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
            return
        except MlflowException as exc:
            if not is_not_found(exc):
                raise self._failed(f"reading the registered model {self.model_name!r}", exc) from exc
        try:
            self.client.create_registered_model(
                self.model_name,
                # The UI renders this as Markdown: a bare <your name> would vanish as an HTML tag.
                description="tuneloop intent classifier. Aliases: champion (serving), canary, "
                "challenger (passed gates), previous. A version tagged `approval: pending` waits for "
                "a person: open it (Versions > Version N), in Tags edit `approval` to `approved` and "
                "add the tag `approval_by` with your name, or run `tuneloop approve VERSION --by "
                "NAME`. `tuneloop status` lists the versions waiting.",
            )
        except MlflowException as exc:
            if str(exc.error_code) != "RESOURCE_ALREADY_EXISTS":  # else another process made it
                raise self._failed(f"creating the registered model {self.model_name!r}", exc) from exc

    def _model_aliases(self) -> dict[str, str]:
        """{alias: version} from the registered model in one call; {} when the model does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if is_not_found(exc):
                return {}
            raise self._failed(f"reading the aliases of {self.model_name!r}", exc) from exc
        return {str(a): str(v) for a, v in (model.aliases or {}).items()}

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

        if not str(version).isdigit():
            raise RegistryError(f"{version!r} is not a version number; `tuneloop status` lists them.")
        try:
            # get_model_version fills `aliases` (search_model_versions leaves it empty, see versions()).
            return self._info(self.client.get_model_version(self.model_name, str(version)))
        except MlflowException as exc:
            if not is_not_found(exc):
                raise self._failed(f"reading {self.model_name} version {version}", exc) from exc
            raise RegistryError(
                f"{self.model_name} has no version {version}; `tuneloop status` lists the versions."
            ) from exc

    def versions(self) -> list[VersionInfo]:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{self.model_name}'")
        except MlflowException as exc:
            raise self._failed(f"listing the versions of {self.model_name!r}", exc) from exc
        aliases = self._model_aliases() if found else {}
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(version, []).append(alias)
        infos = (self._info(mv) for mv in found)
        return sorted(
            (replace(i, aliases=sorted(by_version.get(i.version, []))) for i in infos),
            key=lambda v: int(v.version),
        )

    def find_by_round_key(self, round_key: str) -> VersionInfo | None:
        """The version registered for this (snapshot, parent, config), if any: rounds are idempotent."""
        for info in self.versions():
            if info.tags.get("round_key") == round_key:
                return info
        return None

    def register(self, run_id: str, artifact_path: str, tags: dict[str, str]) -> VersionInfo:
        self.ensure_model()
        with self._writing(f"registering a version of {self.model_name!r}"):
            mv = self.client.create_model_version(
                self.model_name,
                source=f"runs:/{run_id}/{artifact_path}",
                run_id=run_id,
                tags={k: str(v) for k, v in tags.items()},
            )
        return self.get_version(mv.version)

    def set_tags(self, version: str, tags: dict[str, Any]) -> None:
        with self._writing(f"setting tags on {self.model_name} version {version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(self.model_name, str(version), key, str(value))

    def delete_tags(self, version: str, keys: list[str]) -> None:
        """Remove version tags; a tag that is not there is already gone."""
        from mlflow.exceptions import MlflowException

        for key in keys:
            try:
                self.client.delete_model_version_tag(self.model_name, str(version), key)
            except MlflowException as exc:
                if not is_not_found(exc):
                    raise self._failed(f"removing the tag {key!r} of version {version}", exc) from exc

    # --- aliases -----------------------------------------------------------------------------
    def alias(self, alias: str) -> VersionInfo | None:
        """The version holding `alias`, or None when the alias (or the model) does not exist."""
        version = self._model_aliases().get(alias)
        return None if version is None else self.get_version(version)

    def set_alias(self, alias: str, version: str) -> None:
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; tuneloop uses {ALIASES}")
        with self._writing(f"moving the alias {alias!r} to version {version}"):
            self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def clear_alias(self, alias: str) -> None:
        """Remove `alias`; removing an alias that is not set is not an error (MLflow agrees)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model_alias(self.model_name, alias)
        except MlflowException as exc:
            if not is_not_found(exc):
                raise self._failed(f"removing the alias {alias!r}", exc) from exc

    def aliases(self) -> dict[str, str]:
        """{alias: version} for tuneloop's aliases, from one registry call."""
        return {a: v for a, v in self._model_aliases().items() if a in ALIASES}

    # --- locks -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, *, timeout_s: float = 600.0, lease_s: float = LEASE_S) -> Iterator[str]:
        """Serialise a critical section across processes and hosts sharing this registry.

        The lock is a registered model `<model>.lock.<name>` (see registry/lock.py); raises
        RegistryError naming the holder and its age after `timeout_s`, or if the lease was lost.
        """
        from tuneloop.registry.lock import LockError, lock_model_name, registry_lock

        lock_name = lock_model_name(self.model_name, name)
        try:
            with registry_lock(
                self.client, lock_name, timeout_s=timeout_s, lease_s=lease_s, where=f" at {self.where}"
            ) as holder:
                yield holder  # errors of the block itself pass through unchanged
        except LockError as exc:
            cause = exc.__cause__
            if isinstance(cause, Exception) and is_refused(cause):  # refused the lock's model
                raise self._failed(f"taking or keeping the lock {lock_name!r}", cause) from exc
            raise RegistryError(mask_secrets(str(exc))) from exc

    # --- artifacts ---------------------------------------------------------------------------
    def download(self, version: str, subpath: str = "", dst: Path | None = None, verify: bool = True) -> Path:
        """Download (part of) a version's artifacts and return the local folder (or file).

        With `verify` (the default), every file is checked against the version's checksums.json
        and the weight files also against their sha256 tags; a mismatch deletes the download and
        raises RegistryError naming the file and both hashes.
        """
        import mlflow

        info = self.get_version(version)
        subpath = subpath.strip("/")
        source = info.source.rstrip("/")
        uri = source + (f"/{subpath}" if subpath else "")
        target = dst or Path(tempfile.mkdtemp(prefix=f"tuneloop-v{version}-"))
        target.mkdir(parents=True, exist_ok=True)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
        if not verify:
            return local
        try:
            problems = self._verify(info, source, subpath, local)
        except Exception:
            _remove(local, target if dst is None else None)
            raise
        if problems:
            _remove(local, target if dst is None else None)
            listing = "\n".join(f"  - {p}" for p in problems)
            raise RegistryError(
                f"v{info.version} ({uri}) does not match its recorded checksums; the download was "
                f"deleted. Do not use this version until its artifacts are restored:\n{listing}"
            )
        return local

    def _verify(self, info: VersionInfo, source: str, subpath: str, local: Path) -> list[str]:
        """Problems of the downloaded `local` (= `subpath` of the version) against its records."""
        import mlflow

        if local.is_file():
            actual = {subpath: sha256_file(local)}
        else:
            prefix = f"{subpath}/" if subpath else ""
            files = (p for p in local.rglob("*") if p.is_file())
            actual = {prefix + str(p.relative_to(local)): sha256_file(p) for p in files}
        # The manifests that may cover these files: the root one, and one in each folder on the way
        # down to `subpath` (a later stage adds e.g. onnx/checksums.json for what it logged).
        parts = subpath.split("/")[:-1] if local.is_file() else [p for p in subpath.split("/") if p]
        folders = ["/".join(parts[:i]) for i in range(len(parts) + 1)]
        folders += sorted({p.rsplit("/", 1)[0] if "/" in p else "" for p in actual if p.endswith(MANIFEST)})
        manifests: dict[str, dict[str, str]] = {}
        with tempfile.TemporaryDirectory(prefix="tuneloop-sums-") as tmp:
            for folder in dict.fromkeys(folders):
                listed = mlflow.artifacts.list_artifacts(artifact_uri=f"{source}/{folder}".rstrip("/"))
                if not any(f.path.rsplit("/", 1)[-1] == MANIFEST for f in listed):
                    continue
                name = f"{folder}/{MANIFEST}" if folder else MANIFEST
                got = mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/{name}", dst_path=tmp)
                manifests[folder] = json.loads(Path(got).read_text())
        if "" not in manifests:
            raise RegistryError(
                f"v{info.version} has no {MANIFEST} at the root of {source}, so its files cannot be "
                "verified; it was not registered by `tuneloop train` (download(verify=False) skips "
                "the check knowingly)."
            )
        expected_under = None if local.is_file() else subpath
        return checksum_problems(actual, flatten_manifests(manifests), info.tags, expected_under)

    def record_event(self, version: str, event: str, payload: dict[str, Any]) -> None:
        """Append-only audit trail: a tag per event (`event.<time>.<name>`) on the version."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        with self._writing(f"recording the event {event!r} on version {version}"):
            self.client.set_model_version_tag(
                self.model_name, str(version), f"event.{stamp}.{event}", json.dumps(payload, sort_keys=True)
            )


def _who() -> str:
    """What to do about a refusal, naming the user MLflow sent (never the password)."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    sent = f"the user {user!r}" if user else "no user (MLFLOW_TRACKING_USERNAME is unset)"
    return (
        f"The request was sent as {sent}. Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a "
        "user with EDIT on this registered model (reading needs READ; the lock models "
        "`<model>.lock.*` need MANAGE, which their creator gets): README, 'Running against Prefect "
        "and MLflow servers'."
    )


def _remove(local: Path, made: Path | None) -> None:
    """Delete a rejected download, and the temporary folder made for it."""
    if local.is_dir():
        shutil.rmtree(local, ignore_errors=True)
    else:
        local.unlink(missing_ok=True)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


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
