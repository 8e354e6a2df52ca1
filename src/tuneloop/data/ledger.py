"""The ingest ledger: one record per batch, the files it read (by hash), which snapshots' MLflow
lineage is logged, and the lock that keeps two ingests from cutting snapshots at once.

Records live in `<home>/ledger/`: `batch-*.json` (the batch's IngestSummary) and
`lineage/<snapshot>.json` (the MLflow run that holds the snapshot's lineage). A batch record is
written after its snapshot commits and rebuilt from the snapshot's manifest when a kill fell between
the two (`recover_ledger`).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.data import snapshot as snap
from tuneloop.data.batch import IngestConfig


@contextmanager
def ingest_lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with (home / "ingest.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ledger_records(cfg: IngestConfig) -> list[dict[str, Any]]:
    import json

    if not cfg.ledger_dir.is_dir():
        return []
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(cfg.ledger_dir.glob("batch-*.json"))]
    return sorted(records, key=lambda r: r.get("batch", ""))


def recover_ledger(cfg: IngestConfig) -> None:
    """Re-create batch records for snapshots whose ingest was killed after its commit point."""
    recorded = {r.get("snapshot") for r in ledger_records(cfg)}
    for sid in snap.snapshot_ids(cfg.snapshots_dir):
        if sid not in recorded:
            batch = snap.load_manifest(cfg.snapshots_dir, sid).batch
            if batch.get("batch"):
                snap.write_json_atomic(cfg.ledger_dir / f"{batch['batch']}.json", batch)


def known_file_hashes(records: list[dict[str, Any]]) -> set[str]:
    """Hashes of files already ingested (read, not quarantined whole) according to the ledger."""
    return {
        f["sha256"] for r in records for f in r.get("files", []) if f.get("sha256") and not f.get("error")
    }


def lineage_pending(cfg: IngestConfig) -> list[str]:
    """Committed snapshots whose MLflow lineage is not recorded as logged yet, oldest first."""
    return [
        sid for sid in snap.snapshot_ids(cfg.snapshots_dir) if not (cfg.lineage_dir / f"{sid}.json").is_file()
    ]


def mark_lineage_logged(cfg: IngestConfig, snapshot_id: str, run_id: str) -> None:
    """Record that `snapshot_id`'s lineage is in MLflow run `run_id` (call only once the run exists)."""
    snap.write_json_atomic(
        cfg.lineage_dir / f"{snapshot_id}.json",
        {"snapshot": snapshot_id, "mlflow_run_id": run_id, "logged_at": datetime.now(UTC).isoformat()},
    )


def existing_keys(cfg: IngestConfig) -> tuple[set[str], dict[str, str]]:
    """(dedup keys, text key -> label) over every row of every committed snapshot."""
    keys: set[str] = set()
    labels_by_text: dict[str, str] = {}
    for split in snap.SPLITS:
        frame = snap.load_all(cfg.snapshots_dir, split)
        for label, key in zip(frame["label"], frame["key"], strict=True):
            keys.add(key)
            labels_by_text[key.split(":", 1)[0]] = label  # key = "<text key>:<label>"
    return keys, labels_by_text
