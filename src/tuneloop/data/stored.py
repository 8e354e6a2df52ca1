"""Every text ingest keeps or has been handed, file by file: what `tuneloop redact --check` scans.

Places, in order: each snapshot's splits (every string column), the quarantine reports and the
whole files kept in quarantine, and what waits in the landing folder. Parquet files are read as
tables; any other file line by line as text (CSV and JSONL rows, a quarantined file of any kind),
bytes that are not UTF-8 left as they are, so nothing in a file is skipped because it is malformed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneloop.data import snapshot as snap
from tuneloop.data.batch import IngestConfig


@dataclass(frozen=True)
class Place:
    """One file that holds texts: which kind of place, the snapshot it belongs to, if any."""

    kind: str  # snapshot, quarantine, landing
    path: Path
    snapshot: str | None = None


def places(cfg: IngestConfig) -> Iterator[Place]:
    """Every file under the snapshots, quarantine and landing folders that may hold a text."""
    for snapshot_id in snap.snapshot_ids(cfg.snapshots_dir):
        for split in snap.SPLITS:
            path = cfg.snapshots_dir / snapshot_id / f"{split}.parquet"
            if path.is_file():
                yield Place("snapshot", path, snapshot_id)
    for kind, folder in (("quarantine", cfg.quarantine_dir), ("landing", cfg.landing_dir)):
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    yield Place(kind, path)


def texts_in(path: Path) -> Iterator[str]:
    """The strings a file holds: a Parquet table's string cells, or any other file's lines."""
    if path.suffix.lower() == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception:  # not a readable table (a quarantined file): scan its bytes instead
            frame = None
        if frame is not None:
            for column in frame.columns:
                for value in frame[column]:
                    if isinstance(value, str) and value:
                        yield value
            return
    with path.open("rb") as handle:
        for line in handle:
            yield line.decode("utf-8", "surrogateescape")
