"""Model versions and their tags: register, read, list, tag, and the append-only audit events."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from tuneloop.registry.client import RegistryClient, RegistryError, VersionInfo, is_not_found


class VersionStore(RegistryClient):
    """The registered model's versions, each as a `VersionInfo` (plain data)."""

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

    def record_event(self, version: str, event: str, payload: dict[str, Any]) -> None:
        """Append-only audit trail: a tag per event (`event.<time>.<name>`) on the version."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        with self._writing(f"recording the event {event!r} on version {version}"):
            self.client.set_model_version_tag(
                self.model_name, str(version), f"event.{stamp}.{event}", json.dumps(payload, sort_keys=True)
            )
