"""Ingest: files of labelled text in, one validated, de-duplicated, immutable snapshot out.

Every row read ends in exactly one of three places, so `accepted + duplicates + quarantined == rows`:
- accepted: new, valid rows, written to the snapshot;
- duplicates: the same (normalised text, label) as a row earlier in this batch or in any earlier
  snapshot; counted and listed in the batch record, not stored twice;
- quarantined: written to `quarantine/<batch>.csv` with source file, line, reason and detail.
A file that cannot be read, whose columns do not match, or that is a symbolic link is quarantined
whole (`quarantine.py`): reported under `files_quarantined` once per content, and under
`already_quarantined` when a later poll finds the same bytes again.

Which files are read (the landing convention, `landing.py`): in-flight names (`.*`, `*.tmp`,
`*.part`) never; a file found in a folder only once it has been still for `settle_seconds`; each
file once, hashing and parsing the same bytes. A file not read yet is listed under `waiting` and
picked up by a later poll.

Crash safety: the commit point is the atomic rename of the snapshot folder (see `snapshot.py`); the
batch record in `ledger/` is written after it and rebuilt from the manifest if a kill falls between
the two. Files already ingested are recognised by content hash (ledger and manifests) and skipped.
A committed snapshot's MLflow lineage is pending until `ledger/lineage/<snapshot>.json` records its
run, so a commit with no lineage yet is pending by construction, with no window in which a kill
could lose the fact (ledger.py: `lineage_pending`, `mark_lineage_logged`; `steps/ingest.py` logs
them). What an ingest is told and reports is batch.py's.
An exclusive lock on `<home>/ingest.lock` keeps two ingests from cutting snapshots at once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.data import snapshot as snap
from tuneloop.data.batch import (
    FileQuarantine,
    FileWaiting,
    IngestConfig,
    IngestError,
    IngestSummary,
    note_unread,
    summary_message,
)
from tuneloop.data.landing import find_inputs
from tuneloop.data.ledger import (
    existing_keys,
    ingest_lock,
    known_file_hashes,
    ledger_records,
    recover_ledger,
)
from tuneloop.data.quarantine import (
    earlier_quarantine,
    keep_whole_file,
    link_identity,
    quarantined_before,
    write_quarantine_report,
)
from tuneloop.data.readers import read_file
from tuneloop.data.redaction import TextRedactor, redact_file, redact_record
from tuneloop.data.validate import CleanRow, Rules, check_record

__all__ = ["IngestConfig", "IngestError", "IngestSummary", "ingest", "resolve_inputs"]


def remove_private_landing(files: list[snap.SourceFile], landing_dir: Path) -> list[str]:
    """Remove the landing folder's files that held personal data; return their paths.

    Called once their rows are in the committed snapshot or the quarantine report (redacted): the
    originals would keep card numbers in the landing folder for good. A file a kill leaves behind is
    known by its hash and skipped by later ingests; `tuneloop redact --check` lists it.
    """
    removed = []
    root = landing_dir.resolve()
    for source in files:
        path = Path(source.path)
        if source.personal_data and path.resolve().is_relative_to(root) and path.is_file():
            path.unlink()
            removed.append(source.path)
    return removed


def resolve_inputs(paths: list[Path], cfg: IngestConfig) -> list[Path]:
    """Paths as given, or the landing folder when none are.

    A missing path, or a path that is a symbolic link (it would make ingest read whatever the
    link points at), is the caller's error.
    """
    links = [str(p) for p in paths if p.is_symlink()]
    if links:
        raise IngestError(
            f"refusing symbolic link(s): {', '.join(links)}; ingest never follows links. "
            "Pass the file or folder itself."
        )
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
    file_written: Callable[[Path], None] | None = None,
    redactor: TextRedactor | None = None,
) -> IngestSummary:
    """Validate, de-duplicate and snapshot the given files (or the landing folder).

    `redactor` (steps/ingest.py always passes the policy's) replaces personal data in every
    record's text and label before validation, so nothing after it (duplicates, the snapshot, the
    quarantine report and whole-file copies) sees the values; a row holding an entity the policy
    quarantines is quarantined as `personal_data`, stored redacted. What it found is counted in the
    summary (`personal_data`), never kept. None (this stage's own tests) redacts nothing.
    `progress(stage, done, total)` is called as files are read. Test seams: `before_commit` is
    called with the temporary snapshot folder just before it is renamed into place, `file_written`
    with each file written into it.
    """
    found = find_inputs(resolve_inputs(paths, cfg))
    files = found.files
    batch = f"batch-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    summary = IngestSummary(batch=batch)
    rules = Rules(cfg.max_text_chars, cfg.label_pattern)
    label_re = rules.compiled()

    with ingest_lock(cfg.home):
        snap.remove_stale_temporaries(cfg.snapshots_dir)
        snap.remove_stale_temporaries(cfg.quarantine_dir)
        snap.remove_stale_temporaries(cfg.ledger_dir)
        recover_ledger(cfg)
        records = ledger_records(cfg)
        seen_hashes = known_file_hashes(records)
        quarantined = quarantined_before(records)
        known_keys, existing_labels = existing_keys(cfg)

        quarantine_rows: list[dict[str, Any]] = []
        reasons: Counter[str] = Counter()
        personal: Counter[str] = Counter()
        accepted: list[CleanRow] = []
        batch_keys: set[str] = set()
        columns = [cfg.text_column, cfg.label_column]
        note_unread(summary, found)

        def quarantine_whole(source: snap.SourceFile, content: bytes | None) -> None:
            """Quarantine a whole file, or report it as quarantined already (same bytes, same verdict)."""
            # No hash: the file could not even be opened; nothing to recognise it by next time.
            earlier = (
                earlier_quarantine(quarantined.get(source.sha256, []), columns) if source.sha256 else None
            )
            if source.sha256:
                seen_hashes.add(source.sha256)
            if earlier is not None:
                summary.already_quarantined.append(
                    FileQuarantine(path=source.path, reason=earlier.error or "", detail=earlier.detail)
                )
                return
            summary.files.append(source)
            if redactor is not None:
                source.detail = redactor.redact(source.detail).text
                if content is not None:
                    content, held = redact_file(content, Path(source.path).suffix, redactor)
                    personal.update(held)
                    source.personal_data = sum(held.values())
            keep_whole_file(cfg.quarantine_dir, batch, source, content)
            summary.files_quarantined.append(
                FileQuarantine(path=source.path, reason=source.error or "", detail=source.detail)
            )

        for link in found.symlinks:
            target = link.readlink()
            detail = f"a symbolic link (to {target}); links are never followed"
            source = snap.SourceFile(
                path=str(link), sha256=link_identity(link), error="symlink", detail=detail
            )
            quarantine_whole(source, None)

        # Pass 1: read and validate; group valid rows by text to find conflicts within the batch.
        candidates: list[tuple[snap.SourceFile, CleanRow]] = []
        for index, path in enumerate(files, start=1):
            if progress:
                progress("read", index, len(files))
            settle = cfg.settle_seconds if path in found.found_in_folders else 0.0
            read = read_file(path, cfg.text_column, cfg.label_column, settle_seconds=settle)
            if read.waiting:
                summary.waiting.append(FileWaiting(path=str(path), detail=read.waiting))
                continue
            if read.error == "symlink":  # swapped in for the file after the folder was listed
                read.sha256 = link_identity(path)  # never read: O_NOFOLLOW refused to open it
            if read.sha256 and read.sha256 in seen_hashes:
                summary.skipped_files.append(str(path))
                continue
            source = snap.SourceFile(
                path=str(path), sha256=read.sha256, error=read.error, detail=read.detail, columns=columns
            )
            if read.error:
                quarantine_whole(source, read.content)
                continue
            seen_hashes.add(read.sha256)
            summary.files.append(source)
            for raw in read.records:
                source.rows += 1
                private = None
                if redactor is not None:
                    raw, private, replaced = redact_record(raw, redactor, personal)
                    source.personal_data += replaced
                result = check_record(raw, rules, label_re)
                if isinstance(result, CleanRow) and private is not None:
                    result = ("personal_data", private)
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
            elif row.key in known_keys or row.key in batch_keys:
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
        summary.personal_data = dict(sorted(personal.items()))
        if not summary.balanced:  # an invariant, not an input problem: fail loudly
            raise AssertionError(f"row accounting broke: {summary.model_dump()}")

        if quarantine_rows:
            report = cfg.quarantine_dir / f"{batch}.csv"
            write_quarantine_report(report, quarantine_rows)
            summary.quarantine_report = str(report)

        golden_counts = snap.load_golden(cfg.snapshots_dir)["label"].value_counts().to_dict()
        if accepted:
            splits = snap.split_rows(
                accepted, cfg.eval_fraction, cfg.golden_per_label, golden_counts, cfg.seed
            )
            summary.split = {s: len(splits[s]) for s in snap.SPLITS}
            # Under the lock nobody else cuts a snapshot, so this is the id write_snapshot takes;
            # knowing it first lets the manifest carry the final batch record and message.
            summary.snapshot = snap.next_snapshot_id(cfg.snapshots_dir)
            summary.message = summary_message(summary, len(files))
            manifest = snap.write_snapshot(
                cfg.snapshots_dir,
                splits,
                summary.files,
                cfg.seed,
                cfg.eval_fraction,
                batch=summary.model_dump(mode="json"),
                before_commit=before_commit,
                file_written=file_written,
            )
            if manifest.id != summary.snapshot:  # an invariant of the lock, not an input problem
                raise AssertionError(
                    f"snapshot id moved under the ingest lock: {manifest.id} != {summary.snapshot}"
                )
        else:
            summary.message = summary_message(summary, len(files))
        if cfg.remove_private_landing_files:  # only now: every row is committed, redacted
            summary.landing_removed = remove_private_landing(summary.files, cfg.landing_dir)
            summary.message = summary_message(summary, len(files))
        snap.write_json_atomic(cfg.ledger_dir / f"{batch}.json", summary.model_dump(mode="json"))
    return summary
