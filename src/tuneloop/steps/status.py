"""Step: what the loop holds now (snapshots, quarantine, registered versions and aliases)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuneloop.config import Settings, mask_uri
from tuneloop.data import snapshot as snap
from tuneloop.data.ledger import ledger_records
from tuneloop.registry.retention import GC_TAG
from tuneloop.steps.exclusions import excluded_snapshots
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
                "personal_data": manifest.batch.get("personal_data", {}),
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
    quota = settings.golden_per_label
    return {
        "home": str(settings.data_dir),  # the project's folder (<home> for the default project)
        "project": settings.project,
        "model_name": settings.model_name,
        "snapshots": snapshots,
        "labels": {label: dict(c) for label, c in sorted(per_label.items())},
        # Labels the per-label forgetting check does not guard yet: short of their golden quota.
        "golden_short": {
            label: c.get("golden", 0) for label, c in sorted(per_label.items()) if c.get("golden", 0) < quota
        },
        "golden_per_label": quota,
        "excluded": excluded_snapshots(settings),
        "quarantine": {
            "rows": quarantined,
            "files": files_quarantined,
            "reasons": dict(sorted(reasons.items())),
            "folder": str(cfg.quarantine_dir),
            "bytes": folder_bytes(cfg.quarantine_dir),
        },
        "batches": len(batches),
        # What the home holds on disk besides the registry: kept (snapshots are lineage), capped by
        # the retention policy (quarantine copies) or cleaned by the steps themselves (scratch).
        "bytes": {
            "snapshots": folder_bytes(cfg.snapshots_dir),
            "quarantine": folder_bytes(cfg.quarantine_dir),
            "scratch": folder_bytes(settings.work_dir),
            "home": folder_bytes(settings.home_dir),
        },
    }


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under `folder` (0 when it does not exist); a file that vanishes mid-walk
    (a step cleaning its scratch) is skipped."""
    total = 0
    for path in folder.rglob("*") if folder.is_dir() else ():
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def rollout_outcome(tags: Mapping[str, str], in_flight_step: int | None = None) -> str:
    """A version's last rollout outcome, from its tags (pure): what `tuneloop history` tells at length.

    "rolled back: <why>" wins over a promotion (a champion can be rolled back after it served);
    "promoted (canary)" or "promoted (direct)" by whether a canary passed; "canary at step N" for the
    rollout in flight; "canary stopped" for one that started and neither ended nor is recorded as
    in flight; "-" for a version never rolled out.
    """
    events = {key.split(".", 2)[2] for key in tags if key.startswith("event.") and key.count(".") >= 2}
    if tags.get("rolled_back"):
        return f"rolled back: {tags['rolled_back']}"
    if "promoted_at" in tags:
        return "promoted (canary)" if "canary.passed" in events else "promoted (direct)"
    if in_flight_step is not None:
        return f"canary at step {in_flight_step + 1}"
    if "canary.started" in events:
        return "canary stopped"
    return "-"


def serves_line(tags: Mapping[str, str]) -> str:
    """The model and form a version's conversion serves ("student-3L int8"), "-" before one passed."""
    if tags.get("conversion") != "passed":
        return "-"
    form = "int8" if tags.get("int8_sha256") and tags.get("int8_serve") != "fp32" else "fp32"
    return f"{tags.get('serves', 'teacher')} {form}"


def registry_status(settings: Settings) -> dict[str, Any]:
    """Registered versions with aliases, approval, gate result, key metrics and rollout outcome."""
    from tuneloop.registry.store import Registry
    from tuneloop.steps.rollout_state import read_state

    registry = Registry(settings)
    from tuneloop.steps.gc import version_storage

    versions = []
    found = registry.versions()  # each with the aliases it holds (read from the registered model)
    state = read_state(registry) if found else None
    storage = version_storage(settings, registry, found)
    for info in found:
        step = state.step if state is not None and state.version == info.version else None
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
                # What a passed conversion serves: "teacher int8", "student-3L int8", ... (convert.py).
                "serves": serves_line(info.tags),
                "rollout": rollout_outcome(info.tags, step),
                "personal_data": json.loads(info.tags.get("personal_data", "{}")),
                # Bytes its run stores, and what gc would free now or why it keeps the version.
                "bytes": storage[info.version]["bytes"],
                "gc": "collected"
                if GC_TAG in info.tags and not storage[info.version].get("gc_frees")
                else storage[info.version]["gc"],
                "gc_frees": storage[info.version].get("gc_frees", 0),
            }
        )
    aliases = {alias: v.version for v in found for alias in v.aliases}
    result = {
        "model": settings.model_name,
        "aliases": aliases,
        "versions": versions,
        # Per run, not per version: versions registered from one run (a copy of the champion
        # rolled out again) share its files.
        "bytes": sum({i.run_id or i.version: storage[i.version]["bytes"] for i in found}.values()),
        "gc_would_free": sum(
            {i.run_id or i.version: storage[i.version].get("gc_frees", 0) for i in found}.values()
        ),
    }
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
