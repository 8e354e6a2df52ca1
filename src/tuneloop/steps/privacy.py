"""Step: the policy's redactor, for ingest and the service; and `tuneloop redact --check`.

The redactor is built once per process and policy file (Presidio's engines take ~5 s to import
and build, then ~0.5 ms a text that holds a digit or an '@'), and shared by every caller.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config import Settings

if TYPE_CHECKING:
    from tuneloop.privacy.redactor import Redactor
    from tuneloop.privacy.rules import PrivacyRules

_BUILT: dict[str, Redactor] = {}
_LOCK = threading.Lock()


def privacy_rules(policy_path: Path) -> PrivacyRules:
    """The policy file's `privacy` section as the privacy stage's rules."""
    from tuneloop.privacy.rules import PrivacyRules
    from tuneloop.registry.policy import load_policy

    section = load_policy(policy_path).privacy
    return PrivacyRules(
        entities=dict(section.entities),
        min_score=section.min_score,
        phone_regions=tuple(section.phone_regions),
        ner_recognizers=tuple(section.ner_recognizers),
    )


def removes_private_landing_files(settings: Settings) -> bool:
    """Whether ingest removes landing files that held personal data (policy privacy section)."""
    from tuneloop.registry.policy import load_policy

    return load_policy(settings.policy_path).privacy.landing_files_with_personal_data == "remove"


def redactor_for(settings: Settings) -> Redactor:
    """The redactor the policy file describes (one per process and policy content)."""
    from tuneloop.privacy.redactor import Redactor

    path = Path(settings.policy_path)
    key = f"{path.resolve()}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    with _LOCK:
        if key not in _BUILT:
            _BUILT[key] = Redactor(privacy_rules(path))
        return _BUILT[key]


def personal_data_in(snapshots_dir: Path, snapshot_ids: list[str]) -> dict[str, int]:
    """Entity -> occurrences ingest redacted from these snapshots' rows (their manifests' counts)."""
    from tuneloop.data import snapshot as snap

    total: Counter[str] = Counter()
    for snapshot_id in snapshot_ids:
        total.update(snap.load_manifest(snapshots_dir, snapshot_id).batch.get("personal_data", {}))
    return dict(sorted(total.items()))


def redact_text(settings: Settings, texts: list[str]) -> list[dict[str, Any]]:
    """What the loop would keep of each text, and what it found: `tuneloop redact TEXT`."""
    redactor = redactor_for(settings)
    return [{"text": r.text, "found": r.found} for r in map(redactor.redact, texts)]


def redact_check(settings: Settings) -> dict[str, Any]:
    """Scan snapshots, quarantine and landing for personal data the policy would redact now.

    Reports counts per file and entity (never the values). Nothing is rewritten: a snapshot is
    immutable, and one that holds personal data is kept out of training with `tuneloop exclude`.
    """
    from tuneloop.data.batch import IngestConfig
    from tuneloop.data.stored import places, texts_in

    redactor = redactor_for(settings)
    cfg = IngestConfig(home=settings.data_dir)  # the folders only
    files: list[dict[str, Any]] = []
    total: Counter[str] = Counter()
    scanned = 0
    for place in places(cfg):
        found: Counter[str] = Counter()
        for text in texts_in(place.path):
            found.update(redactor.redact(text).found)
        scanned += 1
        if found:
            total.update(found)
            files.append(
                {
                    "kind": place.kind,
                    "path": str(place.path),
                    "snapshot": place.snapshot,
                    "found": dict(sorted(found.items())),
                }
            )
    snapshots = sorted({f["snapshot"] for f in files if f["snapshot"]})
    if not files:
        message = f"no personal data found in {scanned} file(s) (snapshots, quarantine, landing)"
    else:
        message = f"personal data in {len(files)} of {scanned} file(s): " + ", ".join(
            f"{n} {e}" for e, n in sorted(total.items())
        )
        if snapshots:
            message += (
                f". Snapshots are never rewritten: keep {', '.join(snapshots)} out of training with "
                "`tuneloop exclude SNAPSHOT --reason 'personal data'`"
            )
        if any(f["kind"] != "snapshot" for f in files):
            message += "; quarantine and landing files are yours to delete or redact"
    return {
        "scanned_files": scanned,
        "files": files,
        "found": dict(sorted(total.items())),
        "snapshots": snapshots,
        "message": message,
    }
