"""Rollout state kept in the registry, the withdrawal path, `tuneloop rollback` and `tuneloop history`.

The registry is the single source of truth, the controller's memory included: registered-model
tags `rollout.version`, `rollout.step`, `rollout.started_at`, `rollout.champion`, `rollout.run_id`,
`rollout.by`, `rollout.quality` say which rollout is in flight and where it stood, so a controller
started after a crash picks it up from there. Every alias or weight move happens under
`Registry.lock("aliases")` and is written as an audit event (`Registry.record_event`) naming who,
when, why, from and to.

A withdrawal (a rollback, a deadline, a canary alias found gone) is five writes, and a process can
die between any two. So, like a promotion, it first records its intent (the registered-model tag
`rollback_pending`: version, reason, by, at, figures), then sets the weight to 0, clears the alias,
tags the version, writes the event, forgets the rollout, and only then deletes the intent. Whoever
next takes the `aliases` lock for a rollout (a controller, `tuneloop rollback`, `tuneloop promote`)
finishes a recorded intent first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuneloop.registry.store import Registry, RegistryError, current_user, is_not_found, now_iso

STATE_PREFIX = "rollout."
# Deleted in this order: `version` last, so a reader sees a whole state or none.
STATE_FIELDS = ("step", "started_at", "champion", "run_id", "by", "quality", "version")
CANARY_WEIGHT_TAG = "canary_weight"  # read by the service (tuneloop.steps.serve)
ROLLBACK_TAG = "rollback_pending"  # registered-model tag: a withdrawal recorded, not yet finished
PENDING_TAG = "promotion_pending"  # version tag: a promotion recorded, not yet finished (release.py)
WEIGHT_EVENT = "canary.weight"  # audit event of a weight set to 0 before an alias moves
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
    quality: frozenset[str] = field(default_factory=frozenset)  # quality checks judged at earlier steps


@dataclass(frozen=True)
class ModelView:
    """The registered model's rollout-related state, from one registry read."""

    state: RolloutState | None
    aliases: dict[str, str]
    rollback: dict[str, Any] | None  # a withdrawal's recorded intent, not yet finished
    weight: float


def _state(tags: dict[str, str]) -> RolloutState | None:
    if not tags.get(STATE_PREFIX + "version"):
        return None
    return RolloutState(
        version=tags[STATE_PREFIX + "version"],
        step=int(tags.get(STATE_PREFIX + "step", "0")),
        started_at=float(tags.get(STATE_PREFIX + "started_at", "0")),
        champion=tags.get(STATE_PREFIX + "champion") or None,
        run_id=tags.get(STATE_PREFIX + "run_id") or None,
        by=tags.get(STATE_PREFIX + "by", "unknown"),
        quality=frozenset(q for q in tags.get(STATE_PREFIX + "quality", "").split(",") if q),
    )


def read_state(registry: Registry) -> RolloutState | None:
    """The rollout in flight, or None (also when the model has no version yet)."""
    return read_model(registry).state


def read_model(registry: Registry) -> ModelView:
    """Rollout state, aliases, a pending withdrawal and the canary weight, in one registry call."""
    from mlflow.exceptions import MlflowException

    try:
        model = registry.client.get_registered_model(registry.model_name)
    except MlflowException as exc:
        if is_not_found(exc):
            return ModelView(None, {}, None, 0.0)
        raise
    tags = dict(model.tags or {})
    return ModelView(
        state=_state(tags),
        aliases={str(a): str(v) for a, v in (model.aliases or {}).items()},
        rollback=json.loads(tags[ROLLBACK_TAG]) if tags.get(ROLLBACK_TAG) else None,
        weight=float(tags.get(CANARY_WEIGHT_TAG, "0") or 0),
    )


def write_state(registry: Registry, **fields: Any) -> None:
    for key, value in fields.items():
        text = ",".join(sorted(value)) if isinstance(value, frozenset | set) else str(value)
        registry.client.set_registered_model_tag(registry.model_name, STATE_PREFIX + key, text)


def _delete_model_tag(registry: Registry, key: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        registry.client.delete_registered_model_tag(registry.model_name, key)
    except MlflowException as exc:  # an absent tag is already cleared
        if not is_not_found(exc):
            raise


def clear_state(registry: Registry) -> None:
    """Forget the rollout in flight (version last: a reader sees a whole state or none)."""
    for key in STATE_FIELDS:
        _delete_model_tag(registry, STATE_PREFIX + key)


def set_weight(registry: Registry, weight: float) -> None:
    registry.client.set_registered_model_tag(registry.model_name, CANARY_WEIGHT_TAG, f"{weight:g}")


def weight_to_zero(registry: Registry, version: str, why: str, by: str) -> None:
    """Send the canary nothing, and record it: the first move of every withdrawal and promotion.

    With the weight at 0 every replica sends the canary nothing at its next poll, even one that
    still sees the alias; moving an alias first would leave a moment where a replica holds a weight
    for a canary it may still be loading (Argo Rollouts aborts in the same order).
    """
    set_weight(registry, 0.0)
    registry.record_event(
        version,
        WEIGHT_EVENT,
        {
            "by": by,
            "at": now_iso(),
            "reason": why,
            "alias": "canary",
            "from": version,
            "to": None,
            "weight": 0.0,
        },
    )


def finish_run(registry: Registry, run_id: str | None, outcome: str, reason: str) -> None:
    """Close a rollout's MLflow run with its outcome (once: a closed run keeps its first outcome)."""
    if run_id is None:
        return
    if registry.client.get_run(run_id).data.tags.get("outcome"):
        return
    registry.client.set_tag(run_id, "outcome", outcome)
    registry.client.set_tag(run_id, "reason", reason[:4000])
    registry.client.set_terminated(run_id, "FINISHED" if outcome == "promoted" else "FAILED")


def withdraw_canary(
    registry: Registry, version: str, reason: str, by: str, figures: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Take a canary out of service and end its rollout; caller holds `aliases`. Intent first."""
    intent = {"version": version, "reason": reason, "by": by, "at": now_iso(), "figures": figures or {}}
    registry.client.set_registered_model_tag(
        registry.model_name, ROLLBACK_TAG, json.dumps(intent, sort_keys=True)
    )
    return finish_withdrawal(registry, intent)


def finish_withdrawal(registry: Registry, intent: dict[str, Any]) -> dict[str, Any]:
    """The idempotent body of a withdrawal (caller holds `aliases`): weight 0 FIRST, then the alias.

    A re-run after a kill at any point does the rest; a promotion of the canary that was cut short
    before `champion` moved is abandoned with it (its `promotion_pending` is deleted).
    """
    version, reason, by, at = intent["version"], intent["reason"], intent["by"], intent["at"]
    weight_to_zero(registry, version, f"withdrawn: {reason}", by)
    view = read_model(registry)
    if view.aliases.get("canary") == version:
        registry.clear_alias("canary")
    registry.delete_tags(version, [PENDING_TAG])
    registry.set_tags(version, {"rolled_back": reason, "rolled_back_at": at, "rolled_back_by": by})
    payload = {
        "by": by,
        "at": at,
        "reason": reason,
        "alias": "canary",
        "from": version,
        "to": None,
        "figures": intent.get("figures") or {},
    }
    tags = registry.get_version(version).tags
    recorded = [
        json.loads(v) for k, v in tags.items() if k.startswith("event.") and k.endswith(".rolled_back")
    ]
    if payload not in recorded:  # a run killed after the event but before deleting the intent
        registry.record_event(version, "rolled_back", payload)
    if view.state is not None and view.state.version == version:
        finish_run(registry, view.state.run_id, "rolled_back", reason)
        clear_state(registry)
    _delete_model_tag(registry, ROLLBACK_TAG)
    return {"action": "canary_withdrawn", "version": version, "champion": view.aliases.get("champion")}


def rollback_step(
    settings: Any, reason: str, by: str | None = None, registry: Registry | None = None
) -> dict[str, Any]:
    """`tuneloop rollback`: back to the last known good version, at once.

    During a rollout the champion *is* the last known good, so the canary is withdrawn (weight 0,
    alias cleared) and the rollout is ended (its controller stops at its next tick). A withdrawal
    that was cut short is finished first, and is all this does. Otherwise `champion` moves back to
    `previous`, which the service still holds warm after a promotion (TUNELOOP_SERVE_RETAIN_S), and
    the version that was champion is tagged `rolled_back`.
    """
    if not reason.strip():
        raise RegistryError("a rollback needs --reason: say why, it is recorded on the version")
    registry = registry or Registry(settings)
    by = by or current_user()
    with registry.lock("aliases"):
        view = read_model(registry)
        if view.rollback is not None:
            return finish_withdrawal(registry, view.rollback)
        champion, previous = view.aliases.get("champion"), view.aliases.get("previous")
        canary = view.aliases.get("canary") or (view.state.version if view.state else None)
        if canary is not None and canary != champion:
            return withdraw_canary(registry, canary, reason, by)
        if canary is not None:  # a promotion cut short after `champion` moved: tidy it, then restore
            weight_to_zero(registry, canary, f"rollback: {reason}", by)
            registry.clear_alias("canary")
            registry.delete_tags(canary, [PENDING_TAG])
            if view.state is not None:
                finish_run(registry, view.state.run_id, "rolled_back", reason)
            clear_state(registry)
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
    return None if state is None else {**state.__dict__, "quality": sorted(state.quality)}
