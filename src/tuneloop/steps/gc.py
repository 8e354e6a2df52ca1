"""Step: `tuneloop gc`, retention as policy: collect the bulk of old versions, cap quarantine copies.

    read (versions, aliases, tags; each run's files under the collect roots, with sizes)
      -> plan_gc (pure: registry/retention.py) -> under the `aliases` lock: plan again on fresh
      aliases and tags, write `gc_collected` on each version still to collect -> delete its files

The tag goes before any file, in one write per version, so a gc killed anywhere leaves every
version whole (not yet tagged) or recorded as collected (some files may remain: the next gc plans
them as "finishing an interrupted gc" and removes them). The tags are written under `aliases`, the
lock every alias move takes, and promotion refuses a tagged version: so a version is never tagged
while it is being made champion or canary, nor moved to an alias once tagged. Deleting happens
outside the lock. A dry run reads and plans exactly as the real run does, and writes nothing.

What gc never touches: any version holding an alias, any file outside the policy's `collect`
patterns (adapter, checksums, MLmodel, reports, snapshot, conversion summaries), runs, metrics,
params and tags other than `gc_collected`, and the quarantine's reports, ledger and `.reason.txt`
records. Runs MLflow marks deleted are `mlflow gc`'s to purge: this step reports them (`deleted_runs`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from tuneloop.config import Settings
from tuneloop.data.quarantine import quarantine_copies, remove_copy
from tuneloop.registry.policy import load_policy
from tuneloop.registry.policy_data import RetentionPolicy
from tuneloop.registry.retention import (
    GC_TAG,
    GcPlan,
    QuarantineCopy,
    VersionFacts,
    collected_record,
    copies_beyond_cap,
    gc_record,
    plan_gc,
)
from tuneloop.registry.store import Registry, VersionInfo, current_user, now_iso


def gc_step(settings: Settings, dry_run: bool = False, by: str | None = None) -> dict[str, Any]:
    """Plan (and unless `dry_run`, carry out) gc under the policy's `retention` section.

    Returns the plan per version (action, reason, files, bytes), the bytes collected (or that a
    real run would collect), and the quarantine copies removed beyond the cap. Without a
    `retention` section nothing is collected and nothing removed.
    """
    by = by or current_user()
    retention = load_policy(settings.policy_path).retention
    result: dict[str, Any] = {"dry_run": dry_run, "by": by, "at": now_iso()}
    if retention is None:
        message = f"{settings.policy_path} has no `retention` section: nothing is collected"
        return {**result, "policy": None, "versions": [], "bytes": 0, "quarantine": None, "message": message}
    registry = Registry(settings)
    now = datetime.now(UTC)
    infos = registry.versions()
    files = {i.version: registry.run_files(i.run_id, retention.roots()) if i.run_id else {} for i in infos}
    plan = plan_gc([_facts(i, files[i.version]) for i in infos], retention, now)
    done = plan if dry_run else _carry_out(registry, plan, files, retention, now, by, result["at"])
    quarantine = _cap_quarantine(settings, retention, dry_run, by, result["at"])
    deleted = deleted_runs(settings, registry, infos)
    verb = "would free" if dry_run else "freed"
    collected = [f"v{v.version}" for v in done.collect]
    message = (
        f"{len(collected)} version(s) {'to collect' if dry_run else 'collected'} "
        f"({', '.join(collected) or 'none'}), {verb} {done.bytes / 1e6:.1f} MB; "
        f"quarantine: {len(quarantine['removed'])} cop(ies) beyond {retention.quarantine_max_copies} "
        f"{'to remove' if dry_run else 'removed'}"
    )
    return {
        **result,
        "policy": retention.model_dump(mode="json"),
        "versions": [v.as_dict() | {"aliases": _aliases(infos, v.version)} for v in done.versions],
        "bytes": done.bytes,
        "quarantine": quarantine,
        "deleted_runs": deleted,
        "message": message + (f"; {deleted['message']}" if deleted["runs"] else ""),
    }


def deleted_runs(settings: Settings, registry: Registry, infos: list[VersionInfo]) -> dict[str, Any]:
    """Runs marked deleted (the MLflow UI's delete) still hold their artifacts until `mlflow gc`
    purges them, metadata and files, for good. That is MLflow's tool, and it runs where the backend
    store is reachable (the tracking server's database), so this only reports them, with the
    command. `mlflow gc` does not look at registered versions: a deleted run a version was
    registered from is named apart, to be restored rather than purged."""
    from mlflow.entities import ViewType

    client = registry.client
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    found = client.search_runs(experiments, run_view_type=ViewType.DELETED_ONLY) if experiments else []
    backs = {i.run_id: i.version for i in infos if i.run_id}
    runs = [
        {
            "run_id": r.info.run_id,
            "version": backs.get(r.info.run_id),
            "bytes": sum(registry.run_files(r.info.run_id).values()),
        }
        for r in found
    ]
    purgeable = [r for r in runs if r["version"] is None]
    lineage = [r for r in runs if r["version"] is not None]
    parts = []
    if purgeable:
        ids = ",".join(r["run_id"] for r in purgeable)
        size = sum(r["bytes"] for r in purgeable) / 1e6
        parts.append(
            f"{len(purgeable)} run(s) marked deleted hold {size:.1f} MB: `MLFLOW_TRACKING_URI=<server> "
            f"mlflow gc --backend-store-uri <its database> --run-ids {ids}` purges them"
        )
    for r in lineage:
        parts.append(
            f"the run of v{r['version']} is marked deleted (its lineage): `mlflow runs restore --run-id "
            f"{r['run_id']}`; never `mlflow gc` it"
        )
    return {"runs": runs, "message": "; ".join(parts)}


def _facts(info: VersionInfo, files: dict[str, int]) -> VersionFacts:
    created = datetime.fromtimestamp(info.created_ms / 1000, UTC)
    return VersionFacts(info.version, info.run_id, created, dict(info.tags), tuple(info.aliases), files)


def _aliases(infos: list[VersionInfo], version: str) -> list[str]:
    return next((i.aliases for i in infos if i.version == version), [])


def _carry_out(
    registry: Registry,
    plan: GcPlan,
    files: dict[str, dict[str, int]],
    retention: RetentionPolicy,
    now: datetime,
    by: str,
    at: str,
) -> GcPlan:
    """Record, then delete. Returns the plan carried out: a version whose aliases or tags changed
    since the plan (promoted, tagged keep, collected by another gc) is kept, saying so."""
    if not plan.collect:
        return plan
    with registry.lock("aliases"):
        fresh = {i.version: i for i in registry.versions()}
        again = plan_gc([_facts(i, files.get(i.version, {})) for i in fresh.values()], retention, now)
        now_planned = {v.version: v for v in again.collect}
        go = [v for v in plan.collect if now_planned.get(v.version) == v]
        for item in go:
            if item.record:
                earlier = collected_record(fresh[item.version].tags)
                registry.set_tags(item.version, {GC_TAG: gc_record(item, at, by, earlier)})
    going = {v.version for v in go}
    changed = "changed while gc ran; left for the next gc"
    for item in go:
        assert item.run_id is not None  # plan_gc never collects a version without a run
        registry.delete_run_files(item.run_id, item.files)
    return GcPlan(
        tuple(
            v
            if v.action == "keep" or v.version in going
            else replace(v, action="keep", reason=changed, files=(), sizes=(), bytes=0)
            for v in plan.versions
        )
    )


def _cap_quarantine(
    settings: Settings, retention: RetentionPolicy, dry_run: bool, by: str, at: str
) -> dict[str, Any]:
    """The oldest whole-file quarantine copies beyond the policy's cap, removed unless `dry_run`."""
    folder = settings.quarantine_dir
    copies = [QuarantineCopy(str(path), batch, size) for path, batch, size in quarantine_copies(folder)]
    beyond = copies_beyond_cap(copies, retention.quarantine_max_copies)
    if not dry_run:
        from pathlib import Path

        note = f"copy removed by tuneloop gc at {at} by {by} (retention.quarantine_max_copies)"
        for copy in beyond:
            remove_copy(folder, Path(copy.path), note)
    return {
        "max_copies": retention.quarantine_max_copies,
        "copies": len(copies),
        "removed": [c.path for c in beyond],
        "bytes": sum(c.bytes for c in beyond),
    }


def version_storage(
    settings: Settings, registry: Registry, infos: list[VersionInfo]
) -> dict[str, dict[str, Any]]:
    """Per version: the bytes its run stores, and what gc would do with it now (the same plan
    `tuneloop gc --dry-run` makes; "no retention policy" without the policy section)."""
    files = {i.version: registry.run_files(i.run_id) if i.run_id else {} for i in infos}
    stored = {v: sum(f.values()) for v, f in files.items()}
    try:
        retention = load_policy(settings.policy_path).retention
    except Exception as exc:  # status reports a policy that does not load; it does not fail on it
        return {v: {"bytes": b, "gc": f"policy not loaded: {type(exc).__name__}"} for v, b in stored.items()}
    if retention is None:
        return {v: {"bytes": b, "gc": "no retention policy"} for v, b in stored.items()}
    plan = plan_gc([_facts(i, files[i.version]) for i in infos], retention, datetime.now(UTC))
    return {
        p.version: {
            "bytes": stored[p.version],
            "gc": f"frees {p.bytes / 1e6:.1f} MB" if p.action == "collect" else p.reason,
            "gc_frees": p.bytes if p.action == "collect" else 0,
        }
        for p in plan.versions
    }
