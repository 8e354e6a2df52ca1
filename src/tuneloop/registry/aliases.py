"""Aliases and locks: which version is `champion`, `canary`, `challenger`, `previous`, and the
cross-process lock under which they move (registry/lock.py has the lock's mechanism)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tuneloop.config import mask_secrets
from tuneloop.registry.client import ALIASES, RegistryError, VersionInfo, is_not_found, is_refused
from tuneloop.registry.versions import VersionStore

# A held lock's lease is renewed every LEASE_S / 3 = 20 s by a thread of its holder, so a long
# critical section (a training round) keeps it; a holder killed with kill -9 blocks the next one for
# at most 60 s. (900 s here once made a controller killed inside an alias move stall every alias move
# for 15 minutes.) Losing it takes a holder stalled for a whole minute; its block then raises.
LEASE_S = 60.0


class AliasStore(VersionStore):
    """Reads and moves tuneloop's aliases; `lock` serialises moves across processes and hosts."""

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
