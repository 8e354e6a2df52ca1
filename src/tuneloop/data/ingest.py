"""Ingest: files of labelled text in, one validated, de-duplicated, immutable snapshot out.

Every row read ends in exactly one of three places, so `accepted + duplicates + quarantined == rows`:
- accepted: new, valid rows, written to the snapshot;
- duplicates: the same (normalised text, label) as a row earlier in this batch or in any earlier
  snapshot; counted and listed in the batch record, not stored twice;
- quarantined: written to `quarantine/<batch>.csv` with source file, line, reason and detail.
A file that cannot be read or whose columns do not match is copied whole to
`quarantine/files/<batch>/` with a `.reason.txt` beside it, and reported under `files_quarantined`.

Crash safety: the commit point is the atomic rename of the snapshot folder (see `snapshot.py`); the
batch record in `ledger/` is written after it and rebuilt from the manifest if a kill falls between
the two. Files already ingested are recognised by content hash (ledger and manifests) and skipped.
An exclusive lock on `<home>/ingest.lock` keeps two ingests from cutting snapshots at once.
"""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tuneloop.data import snapshot as snap
from tuneloop.data.readers import FileRead, find_input_files, read_file
from tuneloop.data.validate import CleanRow, Rules, check_record


@dataclass(frozen=True)
class IngestConfig:
    """What ingest needs to know; built from `Settings` by the CLI and flows."""

    home: Path
    text_column: str = "text"
    label_column: str = "label"
    max_text_chars: int = 2000
    label_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.:/?\- ]{0,63}$"
    eval_fraction: float = 0.2
    golden_per_label: int = 5
    seed: int = 13

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def ledger_dir(self) -> Path:
        return self.home / "ledger"

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"


class FileQuarantine(BaseModel):
    path: str
    reason: str
    detail: str


class IngestSummary(BaseModel):
    """What `tuneloop ingest --json` prints; also stored as the batch record in the ledger."""

    batch: str
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    snapshot: str | None = None
    reasons: dict[str, int] = Field(default_factory=dict)
    files: list[snap.SourceFile] = Field(default_factory=list)
    skipped_files: list[str] = Field(default_factory=list, description="already ingested (same hash)")
    files_quarantined: list[FileQuarantine] = Field(default_factory=list)
    quarantine_report: str | None = None
    split: dict[str, int] = Field(default_factory=dict)
    message: str = ""

    @property
    def balanced(self) -> bool:
        return self.accepted + self.duplicates + self.quarantined == self.rows


class IngestError(RuntimeError):
    """Raised for problems with the request itself (no input given, a path that does not exist)."""


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


def _recover_ledger(cfg: IngestConfig) -> None:
    """Re-create batch records for snapshots whose ingest was killed after its commit point."""
    recorded = {r.get("snapshot") for r in ledger_records(cfg)}
    for sid in snap.snapshot_ids(cfg.snapshots_dir):
        if sid not in recorded:
            batch = snap.load_manifest(cfg.snapshots_dir, sid).batch
            if batch.get("batch"):
                snap.write_json_atomic(cfg.ledger_dir / f"{batch['batch']}.json", batch)


def known_file_hashes(cfg: IngestConfig) -> set[str]:
    """Hashes of files already ingested, including files quarantined whole (they fail the same way).

    Not a file quarantined for `wrong_columns`: read again with a corrected column mapping it is
    new input, and skipping it would leave no way to ingest it. (`files` lists every file a batch
    read, whole-quarantined ones with their `error`.)
    """
    return {
        f["sha256"]
        for r in ledger_records(cfg)
        for f in r.get("files", [])
        if f.get("sha256") and f.get("error") != "wrong_columns"
    }


def _existing_keys(cfg: IngestConfig) -> tuple[set[str], dict[str, str]]:
    """(dedup keys, text key -> label) over every row of every committed snapshot."""
    keys: set[str] = set()
    labels_by_text: dict[str, str] = {}
    for split in snap.SPLITS:
        frame = snap.load_all(cfg.snapshots_dir, split)
        for label, key in zip(frame["label"], frame["key"], strict=True):
            keys.add(key)
            labels_by_text[key.split(":", 1)[0]] = label  # key = "<text key>:<label>"
    return keys, labels_by_text


def _write_quarantine_report(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{snap.TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["source", "line", "reason", "detail", "label", "text"])
        writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _quarantine_file(cfg: IngestConfig, batch: str, read: FileRead) -> FileQuarantine:
    target_dir = cfg.quarantine_dir / "files" / batch
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / read.path.name
    shutil.copy2(read.path, target)
    target.with_name(target.name + ".reason.txt").write_text(
        f"{read.error}: {read.detail}\nsource: {read.path}\nsha256: {read.sha256}\n", encoding="utf-8"
    )
    return FileQuarantine(path=str(read.path), reason=read.error or "unreadable", detail=read.detail)


def resolve_inputs(paths: list[Path], cfg: IngestConfig) -> list[Path]:
    """Paths as given, or the landing folder when none are; a missing path is the caller's error."""
    if not paths:
        if not cfg.landing_dir.is_dir():
            raise IngestError(
                f"no input given and the landing folder {cfg.landing_dir} does not exist; "
                "pass files or folders, or drop files into the landing folder."
            )
        return [cfg.landing_dir]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise IngestError(f"input not found: {', '.join(missing)}")
    return paths


def ingest(
    paths: list[Path],
    cfg: IngestConfig,
    progress: Callable[[str, int, int], None] | None = None,
    before_commit: Callable[[Path], None] | None = None,
) -> IngestSummary:
    """Validate, de-duplicate and snapshot the given files (or the landing folder).

    `progress(stage, done, total)` is called as files are read; `before_commit` is a test seam
    called with the temporary snapshot folder just before it is renamed into place.
    """
    inputs = resolve_inputs(paths, cfg)
    files, unsupported = find_input_files(inputs)
    batch = f"batch-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    summary = IngestSummary(batch=batch)
    rules = Rules(cfg.max_text_chars, cfg.label_pattern)
    label_re = rules.compiled()

    with ingest_lock(cfg.home):
        snap.remove_stale_temporaries(cfg.snapshots_dir)
        snap.remove_stale_temporaries(cfg.quarantine_dir)
        snap.remove_stale_temporaries(cfg.ledger_dir)
        _recover_ledger(cfg)
        seen_hashes = known_file_hashes(cfg)
        existing_keys, existing_labels = _existing_keys(cfg)

        quarantine_rows: list[dict[str, Any]] = []
        reasons: Counter[str] = Counter()
        accepted: list[CleanRow] = []
        batch_keys: set[str] = set()

        for path in unsupported:
            summary.files_quarantined.append(
                FileQuarantine(
                    path=str(path),
                    reason="unsupported_format",
                    detail=f"{path.suffix!r} is not .csv, .jsonl or .parquet",
                )
            )

        # Pass 1: read and validate; group valid rows by text to find conflicts within the batch.
        candidates: list[tuple[snap.SourceFile, CleanRow]] = []
        for index, path in enumerate(files, start=1):
            if progress:
                progress("read", index, len(files))
            read = read_file(path, cfg.text_column, cfg.label_column)
            if read.sha256 in seen_hashes:
                summary.skipped_files.append(str(path))
                continue
            seen_hashes.add(read.sha256)
            source = snap.SourceFile(path=str(path), sha256=read.sha256, error=read.error)
            summary.files.append(source)
            if read.error:
                summary.files_quarantined.append(_quarantine_file(cfg, batch, read))
                continue
            for raw in read.records:
                source.rows += 1
                result = check_record(raw, rules, label_re)
                if isinstance(result, CleanRow):
                    candidates.append((source, result))
                else:
                    reason, detail = result
                    source.quarantined += 1
                    reasons[reason] += 1
                    quarantine_rows.append(
                        {
                            "source": raw.source,
                            "line": raw.line,
                            "reason": reason,
                            "detail": detail,
                            "label": raw.label or "",
                            "text": raw.text or "",
                        }
                    )

        labels_in_batch: dict[str, set[str]] = {}
        for _, row in candidates:
            labels_in_batch.setdefault(row.text_key, set()).add(row.label)

        # Pass 2: conflicts (against history, then within the batch), then exact duplicates.
        for source, row in candidates:
            earlier = existing_labels.get(row.text_key)
            conflict = None
            if earlier is not None and earlier != row.label:
                conflict = f"earlier snapshots label this text {earlier!r}"
            elif len(labels_in_batch[row.text_key]) > 1:
                conflict = f"this batch labels this text {sorted(labels_in_batch[row.text_key])}"
            if conflict:
                source.quarantined += 1
                reasons["label_conflict"] += 1
                quarantine_rows.append(
                    {
                        "source": row.source,
                        "line": row.line,
                        "reason": "label_conflict",
                        "detail": conflict,
                        "label": row.label,
                        "text": row.text,
                    }
                )
            elif row.key in existing_keys or row.key in batch_keys:
                source.duplicates += 1
            else:
                batch_keys.add(row.key)
                source.accepted += 1
                accepted.append(row)

        summary.rows = sum(f.rows for f in summary.files)
        summary.accepted = len(accepted)
        summary.duplicates = sum(f.duplicates for f in summary.files)
        summary.quarantined = sum(f.quarantined for f in summary.files)
        summary.reasons = dict(sorted(reasons.items()))
        if not summary.balanced:  # an invariant, not an input problem: fail loudly
            raise AssertionError(f"row accounting broke: {summary.model_dump()}")

        if quarantine_rows:
            report = cfg.quarantine_dir / f"{batch}.csv"
            _write_quarantine_report(report, quarantine_rows)
            summary.quarantine_report = str(report)

        golden_labels = set(snap.load_golden(cfg.snapshots_dir)["label"])
        if accepted:
            splits = snap.split_rows(
                accepted, cfg.eval_fraction, cfg.golden_per_label, golden_labels, cfg.seed
            )
            summary.split = {s: len(splits[s]) for s in snap.SPLITS}
            # Under the lock nobody else cuts a snapshot, so this is the id write_snapshot takes;
            # knowing it first lets the manifest carry the final batch record and message.
            summary.snapshot = snap.next_snapshot_id(cfg.snapshots_dir)
            summary.message = _message(summary, len(files))
            manifest = snap.write_snapshot(
                cfg.snapshots_dir,
                splits,
                summary.files,
                cfg.seed,
                cfg.eval_fraction,
                batch=summary.model_dump(mode="json"),
                before_commit=before_commit,
            )
            if manifest.id != summary.snapshot:  # an invariant of the lock, not an input problem
                raise AssertionError(
                    f"snapshot id moved under the ingest lock: {manifest.id} != {summary.snapshot}"
                )
        else:
            summary.message = _message(summary, len(files))
        snap.write_json_atomic(cfg.ledger_dir / f"{batch}.json", summary.model_dump(mode="json"))
    return summary


def _message(s: IngestSummary, n_files: int) -> str:
    parts = [
        f"{s.rows} rows read from {len(s.files)} new file(s)",
        f"{s.accepted} accepted + {s.duplicates} duplicates + {s.quarantined} quarantined = {s.rows}",
    ]
    if s.skipped_files:
        parts.append(f"{len(s.skipped_files)} file(s) already ingested, skipped")
    if s.files_quarantined:
        parts.append(f"{len(s.files_quarantined)} file(s) quarantined whole")
    if s.snapshot:
        parts.append(f"snapshot {s.snapshot} cut")
    elif s.accepted == 0:
        parts.append("nothing new: no snapshot cut")
    if n_files == 0:
        parts.append("no .csv, .jsonl or .parquet files found")
    return "; ".join(parts)
