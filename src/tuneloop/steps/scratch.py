"""Scratch folders of a step, `<home>/work/<step>/<name>/`: removed once published, pruned when stale.

A step works in its folder (a round resumes from the checkpoints there after a crash) and removes it
once what it produced is in the registry. A step that fails keeps it for diagnosis. Each successful
run of a step then prunes the step's other folders: oldest first while they exceed
`scratch_max_bytes` together, and every one older than `scratch_max_age_h`. A folder is in use
while the registry lock that guards it is held (`round-<key>` for `rounds/<key>`, `convert-v<N>` for
`convert/v<N>`), so a held lock means "never remove"; removal itself happens under that lock, taken
without waiting, so a run that starts between the look and the removal finds its folder whole or
absent, never half gone.

`plan_prune` decides over plain data; `Scratch` is the thin adapter to the disk and the lock.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneloop.config import Settings
from tuneloop.registry.store import Registry, RegistryError, is_not_found

log = logging.getLogger("tuneloop.scratch")

GIB = 1024**3


@dataclass(frozen=True)
class Folder:
    """One step folder as the pruning decision sees it; `mtime` is the newest write in it."""

    name: str
    bytes: int
    mtime: float
    busy: bool


@dataclass(frozen=True)
class Removal:
    name: str
    reason: str


def plan_prune(folders: Sequence[Folder], max_bytes: int, max_age_s: float, now: float) -> list[Removal]:
    """Which folders to remove, oldest first: every idle one older than `max_age_s`, then idle ones
    while the folders together still exceed `max_bytes`. A busy folder is never removed, but its
    bytes count (they are on the disk), so the limit may take idle folders newer than a busy one."""
    total = sum(f.bytes for f in folders)
    removals: list[Removal] = []
    for folder in sorted(folders, key=lambda f: (f.mtime, f.name)):
        if folder.busy:
            continue
        age_h = (now - folder.mtime) / 3600
        if now - folder.mtime > max_age_s:
            reason = f"last written {age_h:.1f} h ago, over the {max_age_s / 3600:g} h limit"
        elif total > max_bytes:
            reason = f"the step's scratch holds {_size(total)}, over the {_size(max_bytes)} limit"
        else:
            continue
        removals.append(Removal(folder.name, reason))
        total -= folder.bytes
    return removals


def measure(path: Path) -> tuple[int, float]:
    """(bytes of the files under `path`, newest mtime of `path` and anything in it); links not followed."""
    total, newest = 0, path.lstat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed while we walked
                continue
            newest = max(newest, stat.st_mtime)
            if name in files:
                total += stat.st_size
    return total, newest


class Scratch:
    """The folders `parent/<name>/` of one step, each guarded by the registry lock `<prefix><name>`."""

    def __init__(
        self, registry: Registry, parent: Path, lock_prefix: str, max_bytes: int, max_age_s: float
    ) -> None:
        self.registry, self.parent, self.lock_prefix = registry, parent, lock_prefix
        self.max_bytes, self.max_age_s = max_bytes, max_age_s

    @classmethod
    def of(cls, settings: Settings, registry: Registry, step: str, lock_prefix: str) -> Scratch:
        """`<work_dir>/<step>/` with the settings' limits."""
        return cls(
            registry,
            settings.work_dir / step,
            lock_prefix,
            settings.scratch_max_bytes,
            settings.scratch_max_age_h * 3600,
        )

    def path(self, name: str) -> Path:
        return self.parent / name

    def remove_held(self, name: str) -> None:
        """Remove `name` now; only for the caller that holds its lock and has published its work."""
        shutil.rmtree(self.path(name), ignore_errors=True)

    def remove(self, name: str, reason: str = "published") -> bool:
        """Remove `name` under its lock, taken without waiting; False (kept) while someone holds it."""
        if not self.path(name).exists():
            return False
        try:
            with self.registry.lock(self.lock_prefix + name, timeout_s=0):
                shutil.rmtree(self.path(name), ignore_errors=True)
        except RegistryError as exc:  # held (its work goes on) or the registry did not answer
            log.info("scratch %s kept: %s", self.path(name), exc)
            return False
        log.info("scratch %s removed: %s", self.path(name), reason)
        return True

    def busy(self, name: str) -> bool:
        """Whether `name`'s lock is held with a lease that has not run out (registry/lock.py).

        An expired lease means its holder is gone (any waiter would break it). A registry that
        cannot be read counts as busy: when in doubt, keep.
        """
        from mlflow.exceptions import MlflowException

        from tuneloop.registry.lock import lock_model_name

        lock = lock_model_name(self.registry.model_name, self.lock_prefix + name)
        try:
            tags = self.registry.client.get_registered_model(lock).tags or {}
        except MlflowException as exc:
            return not is_not_found(exc)
        return float(tags.get("expires_at") or 0) > time.time()

    def folders(self) -> list[Folder]:
        if not self.parent.is_dir():
            return []
        found = []
        for path in sorted(self.parent.iterdir()):
            if path.is_dir() and not path.is_symlink():
                size, mtime = measure(path)
                found.append(Folder(path.name, size, mtime, self.busy(path.name)))
        return found

    def prune(self, now: float | None = None) -> list[Removal]:
        """Remove what `plan_prune` picks among this step's folders; return what was removed."""
        plan = plan_prune(self.folders(), self.max_bytes, self.max_age_s, time.time() if now is None else now)
        return [r for r in plan if self.remove(r.name, r.reason)]

    def keep(self, name: str, exc: BaseException) -> None:
        """Say on `exc` (and in the log, at error level) where a failed run left its folder."""
        path = self.path(name)
        if not path.exists():
            return
        message = (
            f"scratch kept for diagnosis: {path}; a successful retry of this run removes it (a round "
            f"resumes from its checkpoints there), and any other successful run of this step prunes it "
            f"once it is older than {self.max_age_s / 3600:g} h (scratch_max_age_h) or {self.parent} "
            f"holds more than {_size(self.max_bytes)} (scratch_max_bytes)"
        )
        exc.add_note(message)
        log.error(message)


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 1024**2:.1f} MiB"
