"""Step: keep a snapshot out of training (`tuneloop exclude SNAPSHOT --reason TEXT`), or let it back.

A round refused because one of its snapshots is bad (the gates name it) leaves that snapshot unseen,
so every later round would train on it and be refused again. An operator excludes it: it is never
trained on, replayed or judged again, and the exclusion is recorded with who, when and why
(data/exclusions.py), shown by `tuneloop status`, and undone with `--undo`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tuneloop.config import Settings
from tuneloop.data import exclusions
from tuneloop.data import snapshot as snap


def excluded_snapshots(settings: Settings) -> dict[str, dict[str, Any]]:
    """{snapshot: {reason, by, at}} of the snapshots excluded now."""
    now = exclusions.excluded_now(exclusions.read_events(settings.ledger_dir))
    return {sid: {"reason": e.reason, "by": e.by, "at": e.at} for sid, e in now.items()}


def exclude_step(
    settings: Settings, snapshot: str, reason: str, by: str | None = None, undo: bool = False
) -> dict[str, Any]:
    """Exclude `snapshot` from every later round (or, with `undo`, let it back); what was recorded."""
    from tuneloop.registry.store import current_user

    snap.load_manifest(settings.snapshots_dir, snapshot)  # a clear error for an unknown id
    event = exclusions.record_exclusion(
        settings.data_dir,
        settings.ledger_dir,
        snapshot,
        reason=reason,
        by=by or current_user(),
        excluded=not undo,
    )
    return {**asdict(event), "excluded_now": sorted(excluded_snapshots(settings))}
