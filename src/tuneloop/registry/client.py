"""The registry's connection and vocabulary: the MLflow client, its errors, and versions as data.

`RegistryClient` opens the tracking and registry URIs and turns MLflow's failures into a
`RegistryError` that says what failed, where, and what to do; the parts of `Registry` (versions.py,
aliases.py, downloads.py, runs.py) build on it. Everything here is plain data or a pure helper.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tuneloop.config import Settings, mask_secrets, mask_uri
from tuneloop.files import sha256_file

ALIASES = ("champion", "canary", "challenger", "previous")
APPROVAL_STATES = ("pending", "approved", "rejected")


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


class RegistryClient:
    """The MLflow client for one registered model, and how its failures are reported."""

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
