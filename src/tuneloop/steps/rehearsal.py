"""Step: a version made bad on purpose, to rehearse a rollback (`tuneloop demo`'s last drop).

A copy of the champion (same run, same files, so every checksum holds) is registered as a new
version and approved, with the lifecycle tags of the original left behind. The service's fault
switch (TUNELOOP_SERVE_FAULT_VERSION) then makes its model calls fail, and the rollout controller
has to roll it back while the champion keeps answering.
"""

from __future__ import annotations

from typing import Any

from tuneloop.config import Settings
from tuneloop.registry.store import Registry

# Tags that describe what happened to the original, not what the copy is.
LIFECYCLE_PREFIXES = ("event.", "promot", "rolled_back", "round_key", "approval")


def register_champion_copy(settings: Settings, note: str, by: str = "demo") -> dict[str, Any] | None:
    """Register and approve a copy of the champion; {version, copy_of}, or None with no champion."""
    registry = Registry(settings)
    champion = registry.alias("champion")
    if champion is None:
        return None
    keep = {k: v for k, v in champion.tags.items() if not k.startswith(LIFECYCLE_PREFIXES)}
    keep.update(approval="approved", approval_by=by, approval_note=note, demo_fault=note)
    if champion.run_id is None:
        raise ValueError(f"champion v{champion.version} has no run, so it cannot be copied")
    mv = registry.client.create_model_version(
        settings.model_name, champion.source, champion.run_id, tags=keep
    )
    return {"version": str(mv.version), "copy_of": champion.version}
