"""Quarantine on disk: the per-batch report of bad rows, and whole files kept with their reason.

A whole file is quarantined once per content: its sha256 is in the ledger with the reason, and a
later poll that finds the same bytes reports it as already quarantined without copying it again.
The one exception is `wrong_columns` under another column mapping: a file whose columns did not
match is new input once `--text-column` / `--label-column` change. Copies are named
`<first 16 hex of sha256>-<name>`, so two folders' `data.csv` never overwrite each other, and the
`.reason.txt` beside each copy keeps the original path.
"""

from __future__ import annotations

import csv
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

from tuneloop.data.snapshot import TMP_PREFIX, SourceFile

REPORT_FIELDS = ["source", "line", "reason", "detail", "label", "text"]


def write_quarantine_report(path: Path, rows: list[dict[str, Any]]) -> None:
    """The batch's bad rows as CSV, written under a temporary name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def link_identity(path: Path) -> str:
    """A stable id for a refused symbolic link: sha256 of its path and target (the target is not read)."""
    return hashlib.sha256(
        f"symlink\0{path}\0{os.readlink(path)}".encode("utf-8", "surrogateescape")
    ).hexdigest()


def _write_atomic(staging: Path, target: Path, data: bytes) -> None:
    # Staged in the quarantine folder itself (cleaned of `.tmp-*` leftovers by every ingest), then
    # renamed: a kill never leaves a half-copied file under its final name.
    tmp = staging / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)


def keep_whole_file(quarantine_dir: Path, batch: str, source: SourceFile, content: bytes | None) -> Path:
    """Copy a quarantined file's bytes (as read, never read again) and its reason; return the copy.

    `content` is None for a file whose bytes were not read (a symbolic link): only the reason is kept.
    """
    target_dir = quarantine_dir / "files" / batch
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{source.sha256[:16]}-{Path(source.path).name}"
    reason = f"{source.error}: {source.detail}\nsource: {source.path}\nsha256: {source.sha256}\n"
    if content is not None:
        _write_atomic(quarantine_dir, target, content)
    _write_atomic(quarantine_dir, target.with_name(target.name + ".reason.txt"), reason.encode())
    return target


def quarantined_before(records: list[dict[str, Any]]) -> dict[str, list[SourceFile]]:
    """sha256 -> the whole-file quarantines of those bytes recorded in the ledger."""
    found: dict[str, list[SourceFile]] = {}
    for record in records:
        for item in record.get("files", []):
            if item.get("sha256") and item.get("error"):
                found.setdefault(item["sha256"], []).append(SourceFile.model_validate(item))
    return found


def earlier_quarantine(earlier: list[SourceFile], columns: list[str]) -> SourceFile | None:
    """The earlier quarantine that still holds for these bytes under this column mapping, if any.

    A `wrong_columns` verdict holds only for the mapping it was reached under; a record from before
    mappings were recorded holds for none (the file is read again, and recorded with its mapping).
    """
    for source in earlier:
        if source.error != "wrong_columns" or source.columns == columns:
            return source
    return None


REASON_SUFFIX = ".reason.txt"


def quarantine_copies(quarantine_dir: Path) -> list[tuple[Path, str, int]]:
    """(path, batch, bytes) of every whole-file copy kept under `quarantine/files/<batch>/`.

    The `.reason.txt` beside each copy is its record, not a copy, and is never listed.
    """
    root = quarantine_dir / "files"
    if not root.is_dir():
        return []
    return [
        (path, path.parent.name, path.stat().st_size)
        for path in sorted(root.glob("*/*"))
        if path.is_file()
        and not path.is_symlink()
        and not path.name.endswith(REASON_SUFFIX)
        and not path.name.startswith(TMP_PREFIX)
    ]


def remove_copy(quarantine_dir: Path, path: Path, note: str) -> None:
    """Remove a whole-file copy, first adding `note` (who removed it, when, why) to its `.reason.txt`,
    which stays: a kill between the two leaves a copy whose record already says it goes."""
    reason = path.with_name(path.name + REASON_SUFFIX)
    before = reason.read_bytes() if reason.is_file() else b""
    _write_atomic(quarantine_dir, reason, before + note.rstrip("\n").encode() + b"\n")
    path.unlink(missing_ok=True)
