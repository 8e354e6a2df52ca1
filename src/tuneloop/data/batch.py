"""What an ingest is told (`IngestConfig`) and what it reports (`IngestSummary`, also the batch
record kept in the ledger), with the one-line message a person reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from tuneloop.data import snapshot as snap
from tuneloop.data.landing import Inputs


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
    # A file found in a folder is read once unmodified for this long: a writer that writes in
    # place (no rename) pauses between writes far less than 2 s, and a poll every minute or so
    # loses at most one poll to the wait. Tests set 0.
    settle_seconds: float = 2.0
    # A file in the landing folder that held personal data is removed once its rows are committed
    # (redacted) to the snapshot or quarantine, so the folder does not keep the values for good
    # (policy privacy.landing_files_with_personal_data). Files named outside landing are the caller's.
    remove_private_landing_files: bool = True

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

    @property
    def lineage_dir(self) -> Path:
        return self.ledger_dir / "lineage"


class FileQuarantine(BaseModel):
    path: str
    reason: str
    detail: str


class FileWaiting(BaseModel):
    path: str
    detail: str = Field(description="why it was not read on this poll")


class IngestSummary(BaseModel):
    """What `tuneloop ingest --json` prints; also stored as the batch record in the ledger."""

    batch: str
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    snapshot: str | None = None
    reasons: dict[str, int] = Field(default_factory=dict)
    personal_data: dict[str, int] = Field(
        default_factory=dict,
        description="entity -> occurrences found in this batch's rows and redacted (counts only)",
    )
    files: list[snap.SourceFile] = Field(default_factory=list)
    skipped_files: list[str] = Field(default_factory=list, description="already ingested (same hash)")
    files_quarantined: list[FileQuarantine] = Field(default_factory=list)
    already_quarantined: list[FileQuarantine] = Field(
        default_factory=list,
        description="quarantined whole by an earlier batch (same hash): not copied again",
    )
    waiting: list[FileWaiting] = Field(
        default_factory=list, description="still being written: left in place for a later poll"
    )
    quarantine_report: str | None = None
    landing_removed: list[str] = Field(
        default_factory=list,
        description="landing files that held personal data, removed once their rows were committed redacted",
    )
    split: dict[str, int] = Field(default_factory=dict)
    message: str = ""

    @property
    def balanced(self) -> bool:
        return self.accepted + self.duplicates + self.quarantined == self.rows


class IngestError(RuntimeError):
    """Raised for problems with the request itself (no input given, a path that does not exist)."""


def note_unread(summary: IngestSummary, found: Inputs) -> None:
    """Named files ingest will not read: another format (quarantined), or an in-flight name (waiting)."""
    for path in found.unsupported:
        summary.files_quarantined.append(
            FileQuarantine(
                path=str(path),
                reason="unsupported_format",
                detail=f"{path.suffix!r} is not .csv, .jsonl or .parquet",
            )
        )
    for path in found.in_flight:
        summary.waiting.append(
            FileWaiting(
                path=str(path), detail="an in-flight name (.*, *.tmp, *.part): rename it when it is complete"
            )
        )


def summary_message(s: IngestSummary, n_files: int) -> str:
    parts = [
        f"{s.rows} rows read from {len(s.files)} new file(s)",
        f"{s.accepted} accepted + {s.duplicates} duplicates + {s.quarantined} quarantined = {s.rows}",
    ]
    if s.personal_data:
        found = ", ".join(f"{n} {entity}" for entity, n in s.personal_data.items())
        parts.append(f"personal data redacted: {found}")
    if s.landing_removed:
        parts.append(
            f"{len(s.landing_removed)} landing file(s) with personal data removed (rows kept redacted)"
        )
    if s.skipped_files:
        parts.append(f"{len(s.skipped_files)} file(s) already ingested, skipped")
    if s.files_quarantined:
        parts.append(f"{len(s.files_quarantined)} file(s) quarantined whole")
    if s.already_quarantined:
        parts.append(f"{len(s.already_quarantined)} file(s) already quarantined, not copied again")
    if s.waiting:
        parts.append(f"{len(s.waiting)} file(s) waiting: still being written, read on a later poll")
    if s.snapshot:
        parts.append(f"snapshot {s.snapshot} cut")
    elif s.accepted == 0:
        parts.append("nothing new: no snapshot cut")
    if n_files == 0:
        parts.append("no .csv, .jsonl or .parquet files found")
    return "; ".join(parts)
