"""The landing convention: files still being written wait, links are refused, quarantine happens once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tuneloop.data import readers
from tuneloop.data import snapshot as snap
from tuneloop.data.ingest import IngestConfig, IngestError, IngestSummary, ingest
from tuneloop.files import sha256_file


def assert_balanced(summary: IngestSummary) -> None:
    assert summary.accepted + summary.duplicates + summary.quarantined == summary.rows, summary


def age(path: Path, seconds: float) -> None:
    """Set a file's modification time `seconds` into the past, as if its writer had finished then."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def stored_labels(home: Path) -> set[str]:
    return set(snap.load_all(home / "snapshots", "train")["label"]) | set(
        snap.load_all(home / "snapshots", "eval")["label"]
    )


def kept_files(home: Path) -> list[Path]:
    folder = home / "quarantine" / "files"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


# --- files still being written -------------------------------------------------------------------


def test_a_file_still_growing_waits_until_it_settles(home: Path) -> None:
    cfg = IngestConfig(home=home, golden_per_label=0, settle_seconds=2)
    landing = cfg.landing_dir
    landing.mkdir(parents=True)
    growing = landing / "drop.csv"
    # A writer writing in place, stopped mid-row: "track_or" would pass the label pattern.
    growing.write_text(
        "text,label\nwhere is my parcel,track_order\nhas it shipped,track_or", encoding="utf-8"
    )

    first = ingest([], cfg)
    assert [w.path for w in first.waiting] == [str(growing)]
    assert "still" in first.waiting[0].detail and "waiting" in first.message
    assert (first.rows, first.snapshot, first.files, first.files_quarantined) == (0, None, [], [])

    with growing.open("a", encoding="utf-8") as handle:  # the writer goes on: still fresh
        handle.write("der\nany news on my order,track_order\n")
    assert [w.path for w in ingest([], cfg).waiting] == [str(growing)]

    age(growing, 5)  # the writer is done: still for longer than the settle window
    done = ingest([], cfg)
    assert done.waiting == []
    assert (done.rows, done.accepted, done.snapshot) == (3, 3, "snap-0001")
    assert stored_labels(home) == {"track_order"}
    assert done.files[0].sha256 == sha256_file(growing)


def test_in_flight_names_are_never_read(home: Path) -> None:
    cfg = IngestConfig(home=home, golden_per_label=0, settle_seconds=0)
    landing = cfg.landing_dir
    (landing / ".incoming").mkdir(parents=True)
    rows = "text,label\nwhere is my parcel,track_order\nhas it shipped,track_order\n"
    for name in ("drop.csv.part", "drop.csv.tmp", ".drop.csv", ".incoming/drop.csv"):
        (landing / name).write_text(rows, encoding="utf-8")

    summary = ingest([], cfg)
    assert (summary.rows, summary.files, summary.files_quarantined, summary.waiting) == (0, [], [], [])
    assert summary.snapshot is None

    # Named explicitly, an in-flight file is not quarantined as an unknown format: it waits.
    named = ingest([landing / "drop.csv.part"], cfg)
    assert [w.path for w in named.waiting] == [str(landing / "drop.csv.part")]
    assert named.files_quarantined == []

    (landing / "drop.csv.part").rename(landing / "drop.csv")  # the writer's rename: now complete
    renamed = ingest([], cfg)
    assert (renamed.rows, renamed.accepted) == (2, 2)
    assert [Path(f.path).name for f in renamed.files] == ["drop.csv"]


def test_a_file_that_changes_while_read_waits(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "drop.csv"
    path.write_text("text,label\nwhere is my parcel,track_order\n", encoding="utf-8")
    fstat = os.fstat
    calls: list[int] = []

    def fstat_then_append(fd: int) -> os.stat_result:
        # The first fstat is taken before the bytes are read: a writer appends right after it.
        result = fstat(fd)
        calls.append(fd)
        if len(calls) == 1:
            with path.open("a", encoding="utf-8") as handle:
                handle.write("has it sh")
        return result

    monkeypatch.setattr(readers.os, "fstat", fstat_then_append)
    read = readers.read_file(path, "text", "label")
    assert read.waiting.startswith("changed while it was being read")
    assert (read.records, read.error, read.sha256) == ([], None, "")

    monkeypatch.setattr(readers.os, "fstat", fstat)
    again = readers.read_file(path, "text", "label")
    assert again.waiting == ""
    assert again.sha256 == sha256_file(path)  # the hash is of exactly the bytes parsed
    assert [(r.text, r.label) for r in again.records] == [
        ("where is my parcel", "track_order"),
        ("has it sh", None),
    ]


# --- whole-file quarantine: once per content, unique copies --------------------------------------


def test_a_file_with_wrong_columns_is_quarantined_once(home: Path) -> None:
    cfg = IngestConfig(home=home, golden_per_label=0, settle_seconds=0)
    cfg.landing_dir.mkdir(parents=True)
    wrong = cfg.landing_dir / "intents.csv"
    wrong.write_text("utterance,intent\nwhere is my parcel,track_order\n", encoding="utf-8")

    first = ingest([], cfg)
    assert [(Path(q.path).name, q.reason) for q in first.files_quarantined] == [
        ("intents.csv", "wrong_columns")
    ]
    assert len(kept_files(home)) == 2  # the copy and its reason

    for _ in range(2):  # the file stays in landing; every later poll sees it again
        later = ingest([], cfg)
        assert later.files_quarantined == []
        assert [(q.path, q.reason) for q in later.already_quarantined] == [(str(wrong), "wrong_columns")]
        assert later.already_quarantined[0].detail == first.files_quarantined[0].detail
        assert "already quarantined" in later.message
    assert len(kept_files(home)) == 2

    # A corrected mapping reads the same bytes as new input.
    fixed = ingest(
        [], IngestConfig(home=home, text_column="utterance", label_column="intent", settle_seconds=0)
    )
    assert (fixed.rows, fixed.accepted, fixed.already_quarantined) == (1, 1, [])


def test_quarantined_copies_of_same_named_files_do_not_collide(home: Path, tmp_path: Path) -> None:
    for folder, header in (("a", "utterance,intent"), ("b", "question,answer")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "data.csv").write_text(f"{header}\nhello,greet\n", encoding="utf-8")
    summary = ingest([tmp_path / "a", tmp_path / "b"], IngestConfig(home=home, settle_seconds=0))
    assert [q.reason for q in summary.files_quarantined] == ["wrong_columns", "wrong_columns"]

    copies = [p for p in kept_files(home) if not p.name.endswith(".reason.txt")]
    assert len(copies) == 2
    by_source = {}
    for copy in copies:
        reason = copy.with_name(copy.name + ".reason.txt").read_text(encoding="utf-8")
        source = Path(next(line for line in reason.splitlines() if line.startswith("source: "))[8:])
        by_source[source] = copy
    assert set(by_source) == {tmp_path / "a" / "data.csv", tmp_path / "b" / "data.csv"}
    for source, copy in by_source.items():
        assert copy.read_bytes() == source.read_bytes()


# --- symbolic links ------------------------------------------------------------------------------


def test_symlinks_are_refused_and_never_followed(home: Path, tmp_path: Path) -> None:
    cfg = IngestConfig(home=home, golden_per_label=0, settle_seconds=0)
    secret_dir = tmp_path / "elsewhere"
    secret_dir.mkdir()
    secret = secret_dir / "secret.csv"
    secret.write_text("text,label\nthe launch code is 1234,track_order\nanother secret,track_order\n")
    cfg.landing_dir.mkdir(parents=True)
    (cfg.landing_dir / "link.csv").symlink_to(secret)
    (cfg.landing_dir / "linked-folder").symlink_to(secret_dir, target_is_directory=True)
    (cfg.landing_dir / "real.csv").write_text(
        "text,label\nwhere is my parcel,track_order\nhas it shipped,track_order\n"
    )

    summary = ingest([], cfg)
    assert_balanced(summary)
    refused = {Path(q.path).name: q.reason for q in summary.files_quarantined}
    assert refused == {"link.csv": "symlink", "linked-folder": "symlink"}
    assert (summary.rows, summary.accepted) == (2, 2)  # real.csv only
    texts = set(snap.load_all(cfg.snapshots_dir, "train")["text"]) | set(
        snap.load_all(cfg.snapshots_dir, "eval")["text"]
    )
    assert not any("secret" in t or "launch" in t for t in texts)
    # Only reasons are kept for links: nothing of the target was read or copied.
    kept = kept_files(home)
    assert kept and all(p.name.endswith(".reason.txt") for p in kept)
    assert all("launch code" not in p.read_text(encoding="utf-8") for p in kept)

    again = ingest([], cfg)
    assert again.files_quarantined == []
    assert {Path(q.path).name for q in again.already_quarantined} == {"link.csv", "linked-folder"}

    with pytest.raises(IngestError, match="symbolic link"):
        ingest([cfg.landing_dir / "link.csv"], cfg)
    with pytest.raises(IngestError, match="symbolic link"):
        ingest([cfg.landing_dir / "linked-folder"], cfg)
