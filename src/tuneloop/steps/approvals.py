"""Step: approvals given where people give them, picked up by the loop's next check.

A person approves a version by setting its tags approval=approved and approval_by=<name>, in the
MLflow UI or with `tuneloop approve` (which sets the same tags). Nothing notifies the loop of a tag
edit in the UI, so the loop asks: `check_approvals(settings)` lists the versions that are approved
under the policy and ready to roll out, and `waiting_for_approval` lists those a person still has to
look at (what `tuneloop status` shows). Both decisions are pure functions over `VersionInfo`s; the
registry is read (and, for the audit trail, written) only in `check_approvals`.

"Not rolled out yet" means: newer than the champion (a rollout only moves forward, as `challenger`
does), not holding `champion`, `previous` or `canary` (a canary is a rollout in progress: resuming
it is the rollout controller's job), never promoted (`promoted_at`) and never rolled back
(`rolled_back`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tuneloop.config import Settings
from tuneloop.registry.policy import Policy, load_policy
from tuneloop.registry.store import Registry, VersionInfo, now_iso
from tuneloop.steps.release import approval_problems, promotion_problems

APPROVED_EVENT = "approval.approved"  # the event approve_step records; UI approvals get it here


@dataclass(frozen=True)
class Waiting:
    """A version a person has to approve (or reject), and exactly how to do it."""

    version: str
    reasons: list[str]
    ui: str
    command: str
    conversion: str = "-"
    approvers: list[str] | None = None


def approve_in_ui(model_name: str, version: str) -> str:
    """The clicks that approve `version` in the MLflow UI (registry/README.md shows them too)."""
    return (
        f"MLflow UI > Model training > Model registry > {model_name} > Version {version} > Tags: "
        "edit approval to approved (pencil, Save), add approval_by=<your name> (Add)"
    )


def _not_rolled_out(info: VersionInfo, champion: str | None) -> bool:
    if champion is not None and int(info.version) <= int(champion):
        return False
    if {"champion", "previous", "canary"} & set(info.aliases):
        return False
    return "promoted_at" not in info.tags and "rolled_back" not in info.tags


def waiting_for_approval(
    versions: Iterable[VersionInfo], policy: Policy, champion: str | None, model_name: str
) -> list[Waiting]:
    """Versions that passed the gates, still need a person's yes, and could otherwise serve.

    A rejected version, or one whose conversion failed, is never served, so nobody is asked about
    it. An approval that does not count (no approval_by, or someone outside the policy's
    `approvers`) still waits, with the reason.
    """
    waiting = []
    for info in versions:
        if not info.gate_passed or info.approval == "rejected":
            continue
        if info.tags.get("conversion") == "failed" or not _not_rolled_out(info, champion):
            continue
        reasons = approval_problems(info, policy)
        if reasons:
            waiting.append(
                Waiting(
                    version=info.version,
                    reasons=reasons,
                    ui=approve_in_ui(model_name, info.version),
                    command=f"tuneloop approve {info.version} --by NAME",
                    conversion=info.tags.get("conversion", "not run"),
                    approvers=policy.approval.approvers,
                )
            )
    return waiting


def ready_for_rollout(
    versions: Iterable[VersionInfo], policy: Policy, champion: str | None
) -> list[VersionInfo]:
    """Versions that may start a rollout now (gates, approval and conversion all pass), newest first."""
    ready = [
        info for info in versions if _not_rolled_out(info, champion) and not promotion_problems(info, policy)
    ]
    return sorted(ready, key=lambda i: int(i.version), reverse=True)


def check_approvals(settings: Settings, registry: Registry | None = None) -> list[VersionInfo]:
    """The loop's check: approved versions ready to roll out, newest first (empty: nothing to do).

    Reads the registry once. An approval set in the MLflow UI leaves no time or audit record (the UI
    writes only the tags a person typed), so the first check that sees it records the event
    `approval.approved` (`via: registry tags`) and `approval_at`, under the same lock `tuneloop
    approve` uses; a version already carrying that event (approved by the CLI, or seen before) is
    left alone. Returns fresh `VersionInfo`s: call the rollout with `info.version`.
    """
    policy = load_policy(settings.policy_path)
    registry = registry or Registry(settings)
    versions = registry.versions()
    champion = next((v.version for v in versions if "champion" in v.aliases), None)
    ready = ready_for_rollout(versions, policy, champion)
    unrecorded = [info for info in ready if not _approval_recorded(info)]
    if not unrecorded:
        return ready
    with registry.lock("aliases"):
        for info in unrecorded:
            fresh = registry.get_version(info.version)  # a person may have changed it meanwhile
            if _approval_recorded(fresh) or promotion_problems(fresh, policy):
                continue
            by = fresh.tags.get("approval_by", "")
            if "approval_at" not in fresh.tags:
                registry.set_tags(fresh.version, {"approval_at": now_iso()})
            registry.record_event(fresh.version, APPROVED_EVENT, {"by": by, "via": "registry tags"})
    fresh_versions = registry.versions()
    return ready_for_rollout(fresh_versions, policy, champion)


def _approval_recorded(info: VersionInfo) -> bool:
    # The auto-approval of the demo policy is recorded by its approval_by; it needs no event.
    if info.tags.get("approval_by") == "policy:auto_approve":
        return True
    return any(k.startswith("event.") and k.endswith(f".{APPROVED_EVENT}") for k in info.tags)
