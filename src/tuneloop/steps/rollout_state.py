"""Rollout state kept in the registry, the abort path, `tuneloop rollback` and `tuneloop history`.

The registry is the single source of truth, the controller's memory included: registered-model
tags `rollout.version`, `rollout.step`, `rollout.started_at`, `rollout.champion`, `rollout.run_id`,
`rollout.by` say which rollout is in flight and where it stood, so a controller started after a
crash picks it up from there. Every alias or weight move happens under `Registry.lock("aliases")`
and is written as an audit event (`Registry.record_event`) naming who, when, why, from and to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tuneloop.registry.store import Registry, RegistryError, current_user, now_iso

STATE_PREFIX = "rollout."
CANARY_WEIGHT_TAG = "canary_weight"  # read by the service (tuneloop.steps.serve)
EXPERIMENT = "tuneloop-rollouts"


@dataclass(frozen=True)
class RolloutState:
    """A rollout in flight, as the registry records it."""

    version: str
    step: int
    started_at: float
    champion: str | None
    run_id: str | None
    by: str


def model_tags(registry: Registry) -> dict[str, str]:
    return dict(registry.client.get_registered_model(registry.model_name).tags or {})


def read_state(registry: Registry) -> RolloutState | None:
    """The rollout in flight, or None."""
    tags = model_tags(registry)
    if not tags.get(STATE_PREFIX + "version"):
        return None
    return RolloutState(
        version=tags[STATE_PREFIX + "version"],
        step=int(tags.get(STATE_PREFIX + "step", "0")),
        started_at=float(tags.get(STATE_PREFIX + "started_at", "0")),
        champion=tags.get(STATE_PREFIX + "champion") or None,
        run_id=tags.get(STATE_PREFIX + "run_id") or None,
        by=tags.get(STATE_PREFIX + "by", "unknown"),
    )


def write_state(registry: Registry, **fields: Any) -> None:
    for key, value in fields.items():
        registry.client.set_registered_model_tag(registry.model_name, STATE_PREFIX + key, str(value))


def clear_state(registry: Registry) -> None:
    """Forget the rollout in flight (version last: a reader sees a whole state or none)."""
    for key in ("step", "started_at", "champion", "run_id", "by", "version"):
        try:
            registry.client.delete_registered_model_tag(registry.model_name, STATE_PREFIX + key)
        except Exception as exc:  # an absent tag is already cleared
            if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", "")):
                raise


def set_weight(registry: Registry, weight: float) -> None:
    registry.client.set_registered_model_tag(registry.model_name, CANARY_WEIGHT_TAG, f"{weight:g}")


def withdraw_canary(
    registry: Registry, version: str, reason: str, by: str, figures: dict[str, Any] | None = None
) -> None:
    """Take a canary out of service; caller holds `aliases`. Weight 0 FIRST, then the alias.

    With the weight at 0 every replica sends the canary nothing at its next poll, even one that
    still sees the alias; clearing the alias first would leave a moment where a replica holds a
    weight for a canary it may still be loading.
    """
    set_weight(registry, 0.0)
    canary = registry.aliases().get("canary")
    if canary == version:
        registry.clear_alias("canary")
    registry.set_tags(version, {"rolled_back": reason, "rolled_back_at": now_iso(), "rolled_back_by": by})
    registry.record_event(
        version,
        "rolled_back",
        {
            "by": by,
            "at": now_iso(),
            "reason": reason,
            "alias": "canary",
            "from": version,
            "to": None,
            "figures": figures or {},
        },
    )


def rollback_step(
    settings: Any, reason: str, by: str | None = None, registry: Registry | None = None
) -> dict[str, Any]:
    """`tuneloop rollback`: back to the last known good version, at once.

    During a rollout the champion *is* the last known good, so the canary is withdrawn (weight 0,
    alias cleared) and the rollout is aborted (its controller stops at its next tick). Otherwise
    `champion` moves back to `previous`, which the service still holds warm after a promotion
    (TUNELOOP_SERVE_RETAIN_S), and the version that was champion is tagged `rolled_back`.
    """
    if not reason.strip():
        raise RegistryError("a rollback needs --reason: say why, it is recorded on the version")
    registry = registry or Registry(settings)
    by = by or current_user()
    with registry.lock("aliases"):
        aliases = registry.aliases()
        state = read_state(registry)
        canary = aliases.get("canary") or (state.version if state else None)
        if canary is not None:
            withdraw_canary(registry, canary, reason, by)
            clear_state(registry)
            return {"action": "canary_withdrawn", "version": canary, "champion": aliases.get("champion")}
        champion, previous = aliases.get("champion"), aliases.get("previous")
        if previous is None or champion is None:
            raise RegistryError("nothing to roll back to: no `previous` version is recorded")
        registry.set_alias("champion", previous)
        registry.clear_alias("previous")  # a second rollback must not bring the bad one back
        registry.set_tags(
            champion, {"rolled_back": reason, "rolled_back_at": now_iso(), "rolled_back_by": by}
        )
        payload = {
            "by": by,
            "at": now_iso(),
            "reason": reason,
            "alias": "champion",
            "from": champion,
            "to": previous,
        }
        registry.record_event(previous, "champion.restored", payload)
        registry.record_event(champion, "rolled_back", payload)
    return {"action": "champion_restored", "from": champion, "champion": previous}


def history_step(settings: Any, limit: int = 50, registry: Registry | None = None) -> dict[str, Any]:
    """Audit records of every version, newest first: alias moves, approvals, rollouts."""
    registry = registry or Registry(settings)
    records = []
    for info in registry.versions():
        for key, value in info.tags.items():
            if not key.startswith("event."):
                continue
            _, stamp, name = key.split(".", 2)
            try:
                payload = json.loads(value)
                when = datetime.strptime(stamp, "%Y%m%dT%H%M%S%f").isoformat(timespec="seconds")
            except ValueError:
                continue
            records.append({"at": when, "stamp": stamp, "version": info.version, "event": name, **payload})
    records.sort(key=lambda r: r["stamp"], reverse=True)
    return {"records": records[:limit], "aliases": registry.aliases(), "rollout": _state_dict(registry)}


def _state_dict(registry: Registry) -> dict[str, Any] | None:
    state = read_state(registry)
    return None if state is None else state.__dict__
