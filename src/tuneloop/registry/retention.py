"""Retention: which versions `tuneloop gc` collects, and what a collected version tells its readers.

Pure functions over plain data. `plan_gc` judges each version from its facts (aliases, tags, age,
the collectable files in its run with their sizes) against the policy's `retention` section:

    alias holder (champion, canary, previous, challenger)   keep, always
    among the N newest versions holding no alias             keep ("behind aliases (N newest)")
    tagged <keep_tag>=true                                   keep ("keep tag")
    younger than min_age_days                                keep
    tagged gc_collected, nothing collectable left            keep ("already collected")
    tagged gc_collected, files left (a gc cut short)         collect the remainder
    otherwise                                                collect the files `collect` matches

A collection is recorded on the version (tag `gc_collected`, one write: files, bytes, at, by)
before any file goes, so a gc killed at any point leaves each version whole or recorded; the next
gc removes what is left. Readers (promotion, the service) refuse a recorded version by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from tuneloop.registry.client import ALIASES
from tuneloop.registry.policy_data import RetentionPolicy

GC_TAG = "gc_collected"
# MLflow keeps tag values up to 5,000 characters (8,000 in newer stores); stay well inside. A file
# list is ~45 characters a path: 88 paths fit, far more than a version holds (6 merged files and
# 3 graphs per conversion); a longer list is cut, with the count kept.
TAG_CHARS = 4000


@dataclass(frozen=True)
class VersionFacts:
    """What gc knows of one version: plain data, read by the adapter, judged by `plan_gc`."""

    version: str
    run_id: str | None
    created: datetime
    tags: Mapping[str, str]
    aliases: Sequence[str]
    # Run-relative artifact path -> bytes, for the files under the policy's collect roots.
    files: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionPlan:
    """gc's decision for one version: keep (and why) or collect (which files, how many bytes)."""

    version: str
    action: Literal["keep", "collect"]
    reason: str
    files: tuple[str, ...] = ()
    bytes: int = 0
    sizes: tuple[int, ...] = ()  # bytes of each of `files`, in order
    # Whether the gc_collected tag must be written first (False when finishing a recorded collection).
    record: bool = False
    run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "action": self.action,
            "reason": self.reason,
            "files": list(self.files),
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class GcPlan:
    """Every version's decision, newest first."""

    versions: tuple[VersionPlan, ...]

    @property
    def collect(self) -> list[VersionPlan]:
        return [v for v in self.versions if v.action == "collect"]

    @property
    def bytes(self) -> int:
        return sum(v.bytes for v in self.collect)


def plan_gc(versions: Sequence[VersionFacts], policy: RetentionPolicy, now: datetime) -> GcPlan:
    """Decide, for every version, whether gc keeps it whole or collects which of its files (pure).

    A version holding any of tuneloop's aliases is never collected, and no file outside the
    policy's `collect` patterns is ever planned.
    """
    newest_first = sorted(versions, key=lambda v: int(v.version), reverse=True)
    behind = [v.version for v in newest_first if not set(v.aliases) & set(ALIASES)]
    whole_behind = set(behind[: policy.keep_whole_behind_aliases])
    plans = [_plan_one(v, policy, now, whole_behind) for v in newest_first]
    # Versions sharing a run share its files: collect them only when no version of the run is kept.
    kept_runs = {p.run_id: p.version for p in plans if p.action == "keep" and p.run_id}
    return GcPlan(
        tuple(
            VersionPlan(p.version, "keep", f"shares its run with v{kept_runs[p.run_id]}, which is kept")
            if p.action == "collect" and p.run_id in kept_runs
            else p
            for p in plans
        )
    )


def _plan_one(v: VersionFacts, policy: RetentionPolicy, now: datetime, whole_behind: set[str]) -> VersionPlan:
    def keep(reason: str) -> VersionPlan:
        return VersionPlan(v.version, "keep", reason, run_id=v.run_id)

    held = [a for a in ALIASES if a in v.aliases]
    if held:
        return keep(", ".join(held))
    n = policy.keep_whole_behind_aliases
    if v.version in whole_behind:
        return keep(f"behind aliases ({n} newest)")
    if v.tags.get(policy.keep_tag, "").strip().lower() == "true":
        return keep(f"keep tag ({policy.keep_tag}=true)")
    if now - v.created < timedelta(days=policy.min_age_days):
        return keep(f"younger than {policy.min_age_days:g} days")
    if v.run_id is None:
        return keep("no run (nothing to collect)")
    files = tuple(sorted(path for path in v.files if policy.collects(path)))
    size = sum(v.files[path] for path in files)
    recorded = collected_record(v.tags)
    if recorded is not None:
        if not files:
            return keep("already collected")
        listed = set(recorded.get("files", []))
        record = not set(files) <= listed or bool(recorded.get("truncated"))
        sizes = tuple(v.files[path] for path in files)
        return VersionPlan(
            v.version, "collect", "finishing an interrupted gc", files, size, sizes, record, v.run_id
        )
    if not files:
        return keep("nothing to collect")
    why = f"outside retention (not among the {n} newest behind aliases"
    why += f", older than {policy.min_age_days:g} days)" if policy.min_age_days else ")"
    sizes = tuple(v.files[path] for path in files)
    return VersionPlan(v.version, "collect", why, files, size, sizes, True, v.run_id)


def gc_record(plan: VersionPlan, at: str, by: str, earlier: Mapping[str, Any] | None = None) -> str:
    """The `gc_collected` tag value: JSON {"files", "bytes", "at", "by"} (plus "count" and
    "truncated" when the list is cut to fit a tag). `earlier`: a record this one extends."""
    listed = set((earlier or {}).get("files", []))
    files = sorted(set(plan.files) | listed)
    added = sum(size for path, size in zip(plan.files, plan.sizes, strict=True) if path not in listed)
    size = int((earlier or {}).get("bytes", 0)) + added
    record: dict[str, Any] = {"files": files, "bytes": size, "at": at, "by": by}
    text = json.dumps(record, sort_keys=True)
    while len(text) > TAG_CHARS and record["files"]:
        record["files"] = record["files"][: len(record["files"]) // 2]
        record.update(count=len(files), truncated=True)
        text = json.dumps(record, sort_keys=True)
    return text


def collected_record(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The version's gc record, or None when it was never collected (an unreadable value counts as
    collected: something was removed, even if the record does not say what)."""
    raw = tags.get(GC_TAG)
    if raw is None:
        return None
    try:
        found = json.loads(raw)
    except ValueError:
        return {"files": [], "bytes": 0, "at": "?", "by": "?", "unreadable": raw[:200]}
    return found if isinstance(found, dict) else {"files": [], "unreadable": raw[:200]}


def collected_problem(version: str, tags: Mapping[str, str]) -> str | None:
    """Why a collected version cannot be served or promoted, naming what gc removed and how to get
    it back; None for a version gc never collected."""
    record = collected_record(tags)
    if record is None:
        return None
    files = [str(f) for f in record.get("files", [])]
    count = int(record.get("count", len(files)))
    folders: dict[str, list[str]] = {}
    for path in files:
        folder, _, name = path.rpartition("/")
        folders.setdefault(folder, []).append(name)
    shown = "; ".join(f"{folder}/: {', '.join(names)}" for folder, names in sorted(folders.items()))
    if count > len(files):
        shown += f"; {count - len(files)} more"
    mb = int(record.get("bytes", 0)) / 1e6
    return (
        f"v{version} was collected by `tuneloop gc` at {record.get('at', '?')} by {record.get('by', '?')}: "
        f"{count} file(s), {mb:.1f} MB removed ({shown or 'see its gc_collected tag'}); its lineage "
        f"(adapter, checksums, reports) remains. Run `tuneloop restore {version}` to rebuild its "
        "merged model and ONNX graphs first"
    )


@dataclass(frozen=True)
class QuarantineCopy:
    """A whole-file copy of bad input kept in quarantine: its path, the batch that made it, its size."""

    path: str
    batch: str
    bytes: int


def copies_beyond_cap(copies: Sequence[QuarantineCopy], max_copies: int) -> list[QuarantineCopy]:
    """The oldest copies beyond `max_copies` (pure). Batches are named batch-<UTC time>-<id>, so
    their names sort by age; within a batch, by path."""
    ordered = sorted(copies, key=lambda c: (c.batch, c.path))
    return ordered[: max(0, len(ordered) - max_copies)]
