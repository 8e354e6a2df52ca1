"""Snapshots kept out of training: an operator's decision, recorded with who, when and why, undoable.

A snapshot is immutable, so a bad one (labels shuffled by an upstream bug, a poisoned feedback drop)
cannot be fixed in place; and a round refused because of it leaves it unseen, so every later round
would train on it again and be refused again. Excluding it keeps it out of every later round: not
trained on, not replayed, its golden rows not judged. The snapshot itself stays on disk, untouched.

The record is `ledger/exclusions.json`: every exclusion and undo as an event, oldest first (the audit
trail), rewritten atomically under the ingest lock. Which snapshots are excluded now is a fold over
the events (`excluded_now`), a pure function.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from tuneloop.data.ledger import ingest_lock
from tuneloop.data.snapshot import write_json_atomic

FILE = "exclusions.json"


@dataclass(frozen=True)
class ExclusionEvent:
    """One decision: `excluded` true keeps the snapshot out of training, false lets it back in."""

    snapshot: str
    excluded: bool
    reason: str
    by: str
    at: str


def read_events(ledger_dir: Path) -> list[ExclusionEvent]:
    """Every exclusion decision, oldest first (none recorded: an empty list)."""
    path = ledger_dir / FILE
    if not path.is_file():
        return []
    return [ExclusionEvent(**event) for event in json.loads(path.read_text(encoding="utf-8"))]


def excluded_now(events: list[ExclusionEvent]) -> dict[str, ExclusionEvent]:
    """{snapshot: the decision that excluded it} for the snapshots whose last decision excludes them."""
    last: dict[str, ExclusionEvent] = {}
    for event in events:
        last[event.snapshot] = event
    return {sid: event for sid, event in last.items() if event.excluded}


def record_exclusion(
    home: Path, ledger_dir: Path, snapshot: str, *, reason: str, by: str, excluded: bool = True
) -> ExclusionEvent:
    """Append an exclusion (or, with `excluded=False`, its undo) to the record; returns the event.

    Refuses a decision that changes nothing (excluding an excluded snapshot, letting back one that
    is not excluded) and one without a reason: the record is read by whoever wonders later why a
    snapshot was never trained on.
    """
    if not reason.strip():
        raise ValueError("an exclusion needs a reason (--reason): it is the only record of why")
    with ingest_lock(home):
        events = read_events(ledger_dir)
        now = excluded_now(events)
        if excluded and snapshot in now:
            earlier = now[snapshot]
            raise ValueError(
                f"{snapshot} is already excluded (by {earlier.by} at {earlier.at}: {earlier.reason})"
            )
        if not excluded and snapshot not in now:
            raise ValueError(f"{snapshot} is not excluded, so there is nothing to undo")
        event = ExclusionEvent(
            snapshot=snapshot,
            excluded=excluded,
            reason=reason.strip(),
            by=by,
            at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        write_json_atomic(ledger_dir / FILE, [asdict(e) for e in [*events, event]])
    return event
