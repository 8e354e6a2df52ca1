"""Immutable, versioned data snapshots.

A snapshot is the delta one ingest batch adds: the rows that were new, split per label into `train`
and `eval`, plus the `golden` rows it froze for labels the regression set did not cover yet. Layout:

    snapshots/snap-0003/
        manifest.json      id, parent, counts per label, content hash, sources, batch summary
        train.parquet      text, label, source, line, key
        eval.parquet
        golden.parquet     golden rows first frozen by this snapshot (may be empty)

The golden set as of snapshot N is the union of `golden.parquet` over snapshots 1..N, so once a row
is golden it stays golden and is never trained on. A snapshot is written under a temporary name and
renamed into place (an atomic rename on one file system), so a reader sees all of it or none of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from tuneloop.data.validate import CleanRow

SPLITS = ("train", "eval", "golden")
COLUMNS = ["text", "label", "source", "line", "key"]
TMP_PREFIX = ".tmp-"
_ID = re.compile(r"snap-(\d{4,})")


class SourceFile(BaseModel):
    path: str
    sha256: str = Field(description="of the bytes read; for a refused link, of its path and target")
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    error: str | None = Field(default=None, description="why the whole file was quarantined, if it was")
    detail: str = ""
    columns: list[str] | None = Field(default=None, description="the (text, label) columns it was read with")
    personal_data: int = Field(default=0, description="personal data values found in it and redacted")


class Manifest(BaseModel):
    id: str
    parent: str | None
    created_at: str
    content_hash: str
    rows: dict[str, int]
    counts: dict[str, dict[str, int]] = Field(description="split -> label -> rows")
    labels: list[str]
    sources: list[SourceFile]
    seed: int
    eval_fraction: float
    batch: dict[str, Any] = Field(default_factory=dict, description="the ingest summary of this batch")


def snapshot_number(snapshot_id: str) -> int:
    """The number in a snapshot id: `snap-0042` -> 42. Ids are ordered by it, never as text.

    Ids are zero-padded to four digits and grow a fifth past 9999, so as text `snap-10000` would
    sort before `snap-9999`.
    """
    match = _ID.fullmatch(snapshot_id)
    if match is None:
        raise ValueError(f"{snapshot_id!r} is not a snapshot id (snap-NNNN)")
    return int(match.group(1))


def snapshot_ids(snapshots_dir: Path) -> list[str]:
    """Committed snapshot ids, oldest first by number (temporary folders are invisible).

    A folder named `snap-...` that is not a snapshot id is an error, not something to skip: only
    ingest writes here, so a stray one means someone edited the store by hand.
    """
    if not snapshots_dir.is_dir():
        return []
    names = [p.name for p in snapshots_dir.iterdir() if p.is_dir() and p.name.startswith("snap-")]
    for name in names:
        if _ID.fullmatch(name) is None:
            raise ValueError(f"{snapshots_dir / name} is not a snapshot folder (snap-NNNN); move it away")
    return sorted(names, key=snapshot_number)


def snapshots_before(snapshots_dir: Path, snapshot_id: str) -> list[str]:
    """Committed snapshot ids older than `snapshot_id`, oldest first (numeric order)."""
    number = snapshot_number(snapshot_id)
    return [sid for sid in snapshot_ids(snapshots_dir) if snapshot_number(sid) < number]


def next_snapshot_id(snapshots_dir: Path) -> str:
    ids = snapshot_ids(snapshots_dir)
    last = snapshot_number(ids[-1]) if ids else 0
    return f"snap-{last + 1:04d}"


def load_manifest(snapshots_dir: Path, snapshot_id: str) -> Manifest:
    path = snapshots_dir / snapshot_id / "manifest.json"
    if not path.is_file():
        known = ", ".join(snapshot_ids(snapshots_dir)) or "none"
        raise FileNotFoundError(f"no snapshot {snapshot_id!r} under {snapshots_dir} (known: {known})")
    return Manifest.model_validate_json(path.read_text(encoding="utf-8"))


def load_split(snapshots_dir: Path, snapshot_id: str, split: str) -> pd.DataFrame:
    """One split of one snapshot as a DataFrame with columns text, label, source, line, key."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return pd.read_parquet(snapshots_dir / snapshot_id / f"{split}.parquet")


def load_all(snapshots_dir: Path, split: str, upto: str | None = None) -> pd.DataFrame:
    """A split concatenated over snapshots, oldest first, up to and including `upto`.

    `upto` must be a committed snapshot: an unknown id raises rather than quietly loading them all.
    """
    ids = snapshot_ids(snapshots_dir)
    if upto is not None:
        if upto not in ids:
            known = ", ".join(ids) or "none"
            raise FileNotFoundError(f"no snapshot {upto!r} under {snapshots_dir} (known: {known})")
        ids = [sid for sid in ids if snapshot_number(sid) <= snapshot_number(upto)]
    frames = []
    for sid in ids:
        frames.append(load_split(snapshots_dir, sid, split).assign(snapshot=sid))
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "snapshot"])
    return pd.concat(frames, ignore_index=True)


def load_golden(snapshots_dir: Path, upto: str | None = None) -> pd.DataFrame:
    """The golden regression set as of snapshot `upto` (default: the latest)."""
    return load_all(snapshots_dir, "golden", upto)


def _rng(seed: int, label: str) -> np.random.Generator:
    # One stream per label, so adding a label elsewhere never reshuffles this one.
    return np.random.default_rng([seed, int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)])


def split_rows(
    rows: list[CleanRow],
    eval_fraction: float,
    golden_per_label: int,
    golden_counts: Mapping[str, int],
    seed: int,
) -> dict[str, list[CleanRow]]:
    """Stratified, seeded split of new rows into train / eval / golden.

    Golden: a label short of its quota (`golden_per_label`, counted in `golden_counts` over earlier
    snapshots) freezes up to a third of this batch's rows of it, until the quota is full: 5 golden of
    15 rows leave 10 to train and evaluate on, and a label arriving 3 or 4 rows at a time (feedback, a
    rare intent) still fills its quota over a few batches instead of never being guarded. Only new
    rows can become golden: a row already trained on cannot measure forgetting. Eval:
    round(n * eval_fraction) rows, at least 1 once a label has 2.
    """
    by_label: dict[str, list[CleanRow]] = {}
    for row in sorted(rows, key=lambda r: r.key):
        by_label.setdefault(row.label, []).append(row)
    out: dict[str, list[CleanRow]] = {s: [] for s in SPLITS}
    for label in sorted(by_label):
        group = by_label[label]
        order = _rng(seed, label).permutation(len(group))
        shuffled = [group[i] for i in order]
        frozen = min(max(golden_per_label - golden_counts.get(label, 0), 0), len(shuffled) // 3)
        out["golden"].extend(shuffled[:frozen])
        shuffled = shuffled[frozen:]
        n = len(shuffled)
        n_eval = min(max(round(n * eval_fraction), 1 if n >= 2 else 0), n - 1) if n else 0
        out["eval"].extend(shuffled[:n_eval])
        out["train"].extend(shuffled[n_eval:])
    return out


def _frame(rows: list[CleanRow]) -> pd.DataFrame:
    # Explicit dtypes: an empty split (a snapshot that froze no golden rows) would otherwise be
    # written with float columns, and its schema would not match the other snapshots' files.
    return pd.DataFrame(
        {
            "text": pd.array([r.text for r in rows], dtype="str"),
            "label": pd.array([r.label for r in rows], dtype="str"),
            "source": pd.array([r.source for r in rows], dtype="str"),
            "line": pd.array([r.line for r in rows], dtype="int64"),
            "key": pd.array([r.key for r in rows], dtype="str"),
        },
        columns=COLUMNS,
    )


def content_hash(splits: dict[str, list[CleanRow]]) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        for line in sorted(f"{split}\t{r.label}\t{r.text}" for r in splits[split]):
            digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(
    snapshots_dir: Path,
    splits: dict[str, list[CleanRow]],
    sources: list[SourceFile],
    seed: int,
    eval_fraction: float,
    batch: dict[str, Any],
    before_commit: Callable[[Path], None] | None = None,
    file_written: Callable[[Path], None] | None = None,
) -> Manifest:
    """Write a new snapshot atomically and return its manifest.

    Files go to `snapshots/.tmp-<uuid>/` first, are fsynced, and the folder is renamed to its final
    id in one step. Test seams: `file_written` is called with each file once it is written (a kill
    there lands mid-write), `before_commit` with the folder just before the rename.
    """
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    ids = snapshot_ids(snapshots_dir)
    snapshot_id = next_snapshot_id(snapshots_dir)
    tmp = snapshots_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    counts = {s: dict(sorted(Counter(r.label for r in splits[s]).items())) for s in SPLITS}
    manifest = Manifest(
        id=snapshot_id,
        parent=ids[-1] if ids else None,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        content_hash=content_hash(splits),
        rows={s: len(splits[s]) for s in SPLITS},
        counts=counts,
        labels=sorted({r.label for s in SPLITS for r in splits[s]}),
        sources=sources,
        seed=seed,
        eval_fraction=eval_fraction,
        batch={**batch, "snapshot": snapshot_id},
    )
    try:
        for split in SPLITS:
            _frame(splits[split]).to_parquet(tmp / f"{split}.parquet", index=False)
            if file_written is not None:
                file_written(tmp / f"{split}.parquet")
        (tmp / "manifest.json").write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        if file_written is not None:
            file_written(tmp / "manifest.json")
        for child in tmp.iterdir():
            with child.open("rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if before_commit is not None:
            before_commit(tmp)
        os.rename(tmp, snapshots_dir / snapshot_id)
        _fsync_dir(snapshots_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Delete leftovers of killed runs (`.tmp-*`). Call only while holding the ingest lock."""
    removed = []
    if directory.is_dir():
        for child in directory.iterdir():
            if child.name.startswith(TMP_PREFIX):
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                removed.append(child.name)
    return removed


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON under a temporary name, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
