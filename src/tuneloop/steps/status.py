"""Step: what the loop holds now (snapshots, quarantine, registered versions and aliases)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tuneloop.config import Settings, mask_uri
from tuneloop.data import snapshot as snap
from tuneloop.data.ingest import ledger_records
from tuneloop.steps.ingest import ingest_config


def data_status(settings: Settings) -> dict[str, Any]:
    """Snapshots, rows per label and split, and quarantine totals, from local state only."""
    cfg = ingest_config(settings)
    snapshots = []
    per_label: dict[str, Counter[str]] = {}
    for sid in snap.snapshot_ids(cfg.snapshots_dir):
        manifest = snap.load_manifest(cfg.snapshots_dir, sid)
        snapshots.append(
            {
                "id": manifest.id,
                "parent": manifest.parent,
                "created_at": manifest.created_at,
                "rows": manifest.rows,
                "labels": len(manifest.labels),
                "content_hash": manifest.content_hash[:12],
                "sources": [s.path for s in manifest.sources],
            }
        )
        for split, counts in manifest.counts.items():
            for label, n in counts.items():
                per_label.setdefault(label, Counter())[split] += n
    reasons: Counter[str] = Counter()
    files_quarantined = 0
    quarantined = 0
    batches = ledger_records(cfg)
    for record in batches:
        reasons.update(record.get("reasons", {}))
        quarantined += int(record.get("quarantined", 0))
        files_quarantined += len(record.get("files_quarantined", []))
    return {
        "home": str(settings.home_dir),
        "snapshots": snapshots,
        "labels": {label: dict(c) for label, c in sorted(per_label.items())},
        "quarantine": {
            "rows": quarantined,
            "files": files_quarantined,
            "reasons": dict(sorted(reasons.items())),
            "folder": str(cfg.quarantine_dir),
        },
        "batches": len(batches),
    }


def registry_status(settings: Settings) -> dict[str, Any]:
    """Registered versions with aliases, approval, gate result and key metrics."""
    from tuneloop.registry.store import Registry

    registry = Registry(settings)
    versions = []
    found = registry.versions()  # each with the aliases it holds (read from the registered model)
    for info in found:
        versions.append(
            {
                "version": info.version,
                "aliases": info.aliases,
                "approval": info.approval,
                "gate": info.tags.get("gate", "-"),
                "data_snapshot": info.tags.get("data_snapshot"),
                "parent_version": info.tags.get("parent_version"),
                "macro_f1": info.metric("new.macro_f1"),
                "golden_macro_f1": info.metric("golden.macro_f1"),
                "conversion": info.tags.get("conversion", "-"),
            }
        )
    aliases = {alias: v.version for v in found for alias in v.aliases}
    result = {"model": settings.model_name, "aliases": aliases, "versions": versions}
    return {**result, **_approvals(settings, found, aliases.get("champion"))}


def _approvals(settings: Settings, found: list[Any], champion: str | None) -> dict[str, Any]:
    """Versions waiting for a person's approval, with the exact UI clicks and CLI command.

    A policy file that does not load is reported, not raised: status is what people run to find
    out what is wrong, so it still shows the data and versions.
    """
    from dataclasses import asdict

    from tuneloop.registry.policy import PolicyError, load_policy
    from tuneloop.steps.approvals import waiting_for_approval

    try:
        policy = load_policy(settings.policy_path)
    except (PolicyError, FileNotFoundError) as exc:
        return {"waiting_for_approval": [], "policy_error": str(exc)}
    waiting = waiting_for_approval(found, policy, champion, settings.model_name)
    return {"waiting_for_approval": [asdict(w) for w in waiting]}


def status(settings: Settings, include_registry: bool = True) -> dict[str, Any]:
    # Masked: the URI may carry a password, and status output ends up in logs and tickets.
    result = {"data": data_status(settings), "tracking_uri": mask_uri(settings.resolved_tracking_uri)}
    if include_registry:
        result["registry"] = registry_status(settings)
    return result
