"""Step: move the `champion` alias (promotion and its rules).

The rule itself is a pure function (`promotion_problems`) over plain data; the MLflow calls around
it only read state and move aliases. Alias moves are ordered so that a kill between two calls
never leaves the model without a champion: `previous` is pointed at the old champion first, then
`champion` at the new version; re-running the promotion completes it.
"""

from __future__ import annotations

from typing import Any

from tuneloop.config import Settings
from tuneloop.registry.policy import Policy, load_policy
from tuneloop.registry.store import Registry, RegistryError, VersionInfo, current_user, now_iso


def promotion_problems(info: VersionInfo, policy: Policy) -> list[str]:
    """Why `info` may not become champion under `policy` (empty list: it may)."""
    problems = []
    if not info.gate_passed:
        problems.append(
            f"v{info.version} did not pass the evaluation gates ({info.tags.get('gate', 'unknown')})"
        )
    if info.approval == "rejected":
        problems.append(f"v{info.version} was rejected by {info.tags.get('approval_by', 'someone')}")
    elif policy.approval.required and info.approval != "approved":
        problems.append(
            f"v{info.version} is not approved (approval={info.approval}); set the version tag "
            f"approval=approved in the MLflow UI or run `tuneloop approve {info.version} --by NAME`"
        )
    if info.tags.get("conversion") == "failed":
        problems.append(f"v{info.version} failed its conversion parity gate and is never served")
    return problems


def promote_step(settings: Settings, version: str, reason: str, by: str | None = None) -> dict[str, Any]:
    """Point `champion` at an approved version (first model, or break-glass), old champion to `previous`."""
    if not reason.strip():
        raise RegistryError("a promotion needs --reason: say why, it is recorded on the version")
    policy = load_policy(settings.policy_path)
    registry = Registry(settings)
    info = registry.get_version(version)
    problems = promotion_problems(info, policy)
    if problems:
        raise RegistryError("cannot promote: " + "; ".join(problems))
    who = by or current_user()
    old = registry.alias("champion")
    if old is not None and old.version == info.version:
        return {
            "version": info.version,
            "champion": info.version,
            "previous": _version(registry.alias("previous")),
            "changed": False,
        }
    if old is not None:
        registry.set_alias("previous", old.version)
    registry.set_alias("champion", info.version)
    for alias in ("challenger", "canary"):
        current = registry.alias(alias)
        if current is not None and current.version == info.version:
            registry.clear_alias(alias)
    registry.set_tags(info.version, {"promoted_by": who, "promoted_at": now_iso(), "promoted_reason": reason})
    registry.record_event(
        info.version, "promoted", {"by": who, "reason": reason, "previous": old.version if old else None}
    )
    return {
        "version": info.version,
        "champion": info.version,
        "previous": old.version if old else None,
        "by": who,
        "reason": reason,
        "changed": True,
    }


def _version(info: VersionInfo | None) -> str | None:
    return info.version if info else None
