"""Step: approve a version, and move the `champion` alias (promotion and its rules).

The rule itself is a pure function (`promotion_problems`) over plain data; the MLflow calls around
it read state and move aliases. Every alias move happens under `Registry.lock("aliases")`, and the
state it depends on is read again inside the lock, so two promotions (or a promotion and a round
moving `challenger`) never act on what the other is changing.

A promotion is four writes to the registry, and a process can die between any two. So it first
records its intent (the version tag `promotion_pending`: from, to, by, reason, at), then moves the
aliases (`previous` first, so the model is never without a champion), then writes the version's
`promoted_*` tags and the audit event, and only then clears the intent. A re-run that finds the
intent finishes the job from it, whether or not the aliases had moved yet.

A canary rollout in flight owns the aliases: `tuneloop promote` is refused while one is recorded,
unless forced (with its reason), which ends it first. The controller's own promotion
(`promote_rollout`) re-reads the rollout under the `aliases` lock, so a `tuneloop rollback` that
landed after its last judgement wins; it sets the canary weight to 0 before any alias moves.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from tuneloop.config import Settings
from tuneloop.registry.policy import Policy, load_policy
from tuneloop.registry.retention import collected_problem
from tuneloop.registry.store import Registry, RegistryError, VersionInfo, current_user, now_iso
from tuneloop.steps.rollout_state import (
    PENDING_TAG,
    ModelView,
    clear_state,
    finish_run,
    finish_withdrawal,
    read_model,
    weight_to_zero,
    withdraw_canary,
)

__all__ = ["PENDING_TAG", "approval_problems", "approve_step", "promote_rollout", "promote_step"]
AUTO_APPROVER = "policy:auto_approve"  # what the loop records when the policy approves by itself


def approval_problems(info: VersionInfo, policy: Policy) -> list[str]:
    """Why `info` does not count as approved under `policy` (empty: it does, or none is needed).

    An approval is the tag approval=approved *and* approval_by naming who approved, checked against
    the policy's `approvers` when it lists names: a tag set in the MLflow UI by anyone with write
    access is otherwise indistinguishable from a real approval.
    """
    v, by = info.version, info.tags.get("approval_by", "").strip()
    if info.approval == "rejected":
        return [f"v{v} was rejected by {by or 'someone'}"]
    if not policy.approval.required:
        return []
    fix = (
        f"set the version tags approval=approved and approval_by=<approver> in the MLflow UI, or run "
        f"`tuneloop approve {v} --by NAME`"
    )
    if info.approval != "approved":
        return [f"v{v} is not approved (approval={info.approval}); {fix}"]
    approvers = policy.approval.approvers
    if approvers is None:
        return []
    if by == AUTO_APPROVER and policy.approval.auto_approve:
        return []
    if not by:
        return [
            f"v{v} is tagged approval=approved with no approval_by, but the policy names approvers "
            f"{approvers}; {fix}"
        ]
    if by not in approvers:
        return [f"v{v} was approved by {by!r}, who is not among the policy's approvers {approvers}; {fix}"]
    return []


def promotion_problems(info: VersionInfo, policy: Policy) -> list[str]:
    """Why `info` may not become champion (or canary) under `policy` (empty list: it may).

    Besides gates, approval and conversion: a version `tuneloop gc` collected (tag `gc_collected`)
    has lost its merged model and ONNX graphs, so no alias that serves may move onto it.
    """
    problems = []
    if not info.gate_passed:
        problems.append(
            f"v{info.version} did not pass the evaluation gates ({info.tags.get('gate', 'unknown')})"
        )
    problems += approval_problems(info, policy)
    conversion = info.tags.get("conversion")
    if conversion == "failed":
        problems.append(f"v{info.version} failed its conversion parity gate and is never served")
    elif conversion != "passed":
        problems.append(
            f"v{info.version} has not passed conversion (conversion={conversion or 'not run'}); "
            f"run `tuneloop convert {info.version}` first"
        )
    collected = collected_problem(info.version, info.tags)  # its weights are gone: nothing to serve
    if collected:
        problems.append(collected)
    return problems


def release_problems(settings: Settings, version: str) -> list[str]:
    """Why `version` may not become champion now under the configured policy (empty: it may)."""
    return promotion_problems(Registry(settings).get_version(version), load_policy(settings.policy_path))


def approve_step(
    settings: Settings,
    version: str,
    by: str,
    reject: bool = False,
    note: str = "",
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Record a person's decision on a version, exactly as setting the tags in the MLflow UI does.

    A rejection takes `challenger` off the version, and only when `challenger` is that version: a
    newer candidate that took the alias meanwhile keeps it.
    """
    policy = load_policy(settings.policy_path)
    if policy.approval.approvers and by not in policy.approval.approvers:
        raise RegistryError(
            f"{by!r} is not an approver in {settings.policy_path}: {policy.approval.approvers}"
        )
    registry = registry or Registry(settings)
    state = "rejected" if reject else "approved"
    with registry.lock("aliases"):
        info = registry.get_version(version)
        registry.set_tags(
            info.version,
            {"approval": state, "approval_by": by, "approval_at": now_iso(), "approval_note": note},
        )
        registry.record_event(info.version, f"approval.{state}", {"by": by, "note": note})
        challenger = registry.alias("challenger")
        if reject and challenger is not None and challenger.version == info.version:
            registry.clear_alias("challenger")
    return {"version": info.version, "approval": state, "by": by}


def promote_step(
    settings: Settings,
    version: str,
    reason: str,
    by: str | None = None,
    registry: Registry | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Point `champion` at an approved, converted version, the old champion to `previous`.

    Re-running a promotion that was cut short completes it (aliases, tags, audit event). Refused
    while a canary rollout is in flight unless `force`: the rollout is then ended first, its canary
    withdrawn (or, when it is this version, promoted by this call), with `reason` recorded.
    """
    if not reason.strip():
        raise RegistryError("a promotion needs --reason: say why, it is recorded on the version")
    policy = load_policy(settings.policy_path)
    registry = registry or Registry(settings)
    by = by or current_user()
    with registry.lock("aliases"):
        view = read_model(registry)
        if view.rollback is not None:  # a withdrawal cut short: finish it before anything moves
            finish_withdrawal(registry, view.rollback)
            view = read_model(registry)
        state = view.state
        # A rollout whose canary is already champion was cut short inside its promotion: finishing
        # that is no bypass.
        if state is not None and not force and view.aliases.get("champion") != state.version:
            raise RegistryError(
                f"a canary rollout of v{state.version} is in flight (step {state.step + 1}): promoting "
                f"v{version} now would bypass its checks. Let it finish, withdraw it with `tuneloop "
                "rollback --reason ...`, or pass --force (the rollout is ended, your reason recorded)"
            )
        if state is not None and state.version != str(version):
            why = f"ended by a forced promotion of v{version}: {reason}"
            withdraw_canary(registry, state.version, why, by)
            view = read_model(registry)
        return _promote_locked(registry, registry.get_version(version), reason, by, policy, view)


def promote_rollout(
    settings: Settings,
    version: str,
    reason: str,
    by: str,
    figures: dict[str, Any],
    registry: Registry | None = None,
) -> dict[str, Any] | None:
    """The rollout controller's promotion of its canary; None when the rollout is no longer in flight.

    Re-reads the rollout under the `aliases` lock, so a `tuneloop rollback` (or a forced promotion)
    that landed between the controller's last judgement and now is not overridden.
    """
    policy = load_policy(settings.policy_path)
    registry = registry or Registry(settings)
    with registry.lock("aliases"):
        view = read_model(registry)
        if view.rollback is not None or view.state is None or view.state.version != str(version):
            return None
        info = registry.get_version(version)
        if PENDING_TAG not in info.tags and view.aliases.get("champion") != info.version:  # not a resume
            registry.record_event(
                version,
                "canary.passed",
                {
                    "by": by,
                    "at": now_iso(),
                    "reason": reason,
                    "alias": "champion",
                    "from": view.state.champion,
                    "to": version,
                    "figures": figures,
                },
            )
        return _promote_locked(registry, registry.get_version(version), reason, by, policy, view)


def _promote_locked(
    registry: Registry, info: VersionInfo, reason: str, by: str, policy: Policy, view: ModelView
) -> dict[str, Any]:
    """A promotion, under the `aliases` lock: intent, weight 0, aliases, tags, then the rollout ended."""
    champion = registry.alias("champion")
    if champion is not None and champion.version != info.version and PENDING_TAG in champion.tags:
        _complete(registry, champion, json.loads(champion.tags[PENDING_TAG]))
    if champion is not None and champion.version == info.version:
        if PENDING_TAG not in info.tags:
            _end_rollout(registry, view, info.version, reason, by)
            return {
                "version": info.version,
                "champion": info.version,
                "previous": _version(registry.alias("previous")),
                "changed": False,
                "resumed": False,
            }
        intent = json.loads(info.tags[PENDING_TAG])
        _complete(registry, info, intent)
        _end_rollout(registry, view, info.version, intent["reason"], by)
        return _result(intent, changed=False, resumed=True)
    problems = promotion_problems(info, policy)
    if problems:
        raise RegistryError("cannot promote: " + "; ".join(problems))
    intent = {
        "from": champion.version if champion else None,
        "to": info.version,
        "by": by,
        "reason": reason,
        "at": now_iso(),
    }
    registry.set_tags(info.version, {PENDING_TAG: json.dumps(intent, sort_keys=True)})
    if view.state is not None or view.weight:  # traffic back to the champion before any alias moves
        canary = view.state.version if view.state else info.version
        weight_to_zero(registry, canary, f"promoting v{info.version}", by)
        view = replace(view, weight=0.0)
    if champion is not None:
        registry.set_alias("previous", champion.version)
    registry.set_alias("champion", info.version)
    _complete(registry, registry.get_version(info.version), intent)
    _end_rollout(registry, view, info.version, reason, by)
    return _result(intent, changed=True, resumed=False)


def _end_rollout(registry: Registry, view: ModelView, version: str, reason: str, by: str) -> None:
    """After `version` became champion: weight 0 and the rollout forgotten (nothing left to weigh)."""
    if view.weight:
        weight_to_zero(registry, version, f"v{version} promoted", by)
    if view.state is not None and view.state.version == version:
        finish_run(registry, view.state.run_id, "promoted", reason)
        clear_state(registry)


def _complete(registry: Registry, info: VersionInfo, intent: dict[str, Any]) -> None:
    """The idempotent tail of a promotion whose aliases moved: tidy aliases, tags, event, intent."""
    for alias in ("challenger", "canary"):
        current = registry.alias(alias)
        if current is not None and current.version == info.version:
            registry.clear_alias(alias)
    registry.set_tags(
        info.version,
        {"promoted_by": intent["by"], "promoted_at": intent["at"], "promoted_reason": intent["reason"]},
    )
    payload = {"by": intent["by"], "reason": intent["reason"], "previous": intent["from"], "at": intent["at"]}
    recorded = (
        json.loads(value)
        for key, value in info.tags.items()
        if key.startswith("event.") and key.endswith(".promoted")
    )
    if payload not in list(recorded):  # a run killed after the event but before clearing the intent
        registry.record_event(info.version, "promoted", payload)
    registry.delete_tags(info.version, [PENDING_TAG])


def _result(intent: dict[str, Any], changed: bool, resumed: bool) -> dict[str, Any]:
    return {
        "version": intent["to"],
        "champion": intent["to"],
        "previous": intent["from"],
        "by": intent["by"],
        "reason": intent["reason"],
        "changed": changed,
        "resumed": resumed,
    }


def _version(info: VersionInfo | None) -> str | None:
    return info.version if info else None
