"""Ingest: row accounting, snapshots, splits, golden set, bad input, and crash safety under kill -9."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tuneloop.data import snapshot as snap
from tuneloop.data.bundled import NEW_INTENT, write_bundled
from tuneloop.data.ingest import IngestConfig, IngestError, IngestSummary, ingest
from tuneloop.data.ledger import ledger_records
from tuneloop.data.validate import CleanRow
from tuneloop.files import sha256_file as file_sha256

SPLIT_FILES = {"manifest.json", "train.parquet", "eval.parquet", "golden.parquet"}


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_bundled(tmp_path_factory.mktemp("bundled"))


def assert_balanced(summary: IngestSummary) -> None:
    assert summary.accepted + summary.duplicates + summary.quarantined == summary.rows, summary
    assert sum(summary.reasons.values()) == summary.quarantined


def keys(home: Path, split: str, upto: str | None = None) -> set[str]:
    return set(snap.load_all(home / "snapshots", split, upto)["key"])


# --- the bundled data: accounting, layout, splits, golden set ------------------------------------


def test_summary_accounts_for_every_row(home: Path, bundled: dict[str, Path], tmp_path: Path) -> None:
    first = ingest([bundled["base"]], IngestConfig(home=home))
    assert (first.rows, first.accepted, first.duplicates, first.quarantined) == (600, 600, 0, 0)
    assert first.snapshot == "snap-0001"
    assert sum(first.split.values()) == 600

    # A second batch with all three outcomes: 50 rows seen before, 100 new ones, 3 bad ones.
    base = pd.read_csv(bundled["base"])
    mixed = pd.concat([base.head(50), pd.read_csv(bundled["drift-1"])], ignore_index=True)
    bad = pd.DataFrame({"text": ["", "fine text", "x" * 2001], "label": ["track_order", "", "track_order"]})
    pd.concat([mixed, bad], ignore_index=True).to_csv(tmp_path / "mixed.csv", index=False)
    second = ingest([tmp_path / "mixed.csv"], IngestConfig(home=home))
    assert (second.rows, second.accepted, second.duplicates, second.quarantined) == (153, 100, 50, 3)
    assert_balanced(second)

    as_json = json.loads(second.model_dump_json())  # what `tuneloop ingest --json` prints
    assert {"rows", "accepted", "duplicates", "quarantined", "snapshot", "reasons"} <= set(as_json)
    assert as_json["snapshot"] == "snap-0002"
    assert as_json["reasons"] == {"empty_text": 1, "missing_label": 1, "text_too_long": 1}
    assert as_json["files"][0]["rows"] == 153


def test_snapshot_layout_and_manifest(home: Path, bundled: dict[str, Path]) -> None:
    cfg = IngestConfig(home=home)
    ingest([bundled["base"]], cfg)
    ingest([bundled["drift-1"]], cfg)
    assert snap.snapshot_ids(cfg.snapshots_dir) == ["snap-0001", "snap-0002"]
    assert {p.name for p in cfg.snapshots_dir.iterdir()} == {"snap-0001", "snap-0002"}

    for sid, parent, source in [("snap-0001", None, "base"), ("snap-0002", "snap-0001", "drift-1")]:
        folder = cfg.snapshots_dir / sid
        assert {p.name for p in folder.iterdir()} == SPLIT_FILES
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        assert (manifest["id"], manifest["parent"]) == (sid, parent)
        assert datetime.fromisoformat(manifest["created_at"]).utcoffset() is not None
        assert [(s["path"], s["sha256"]) for s in manifest["sources"]] == [
            (str(bundled[source]), file_sha256(bundled[source]))
        ]
        frames = {split: snap.load_split(cfg.snapshots_dir, sid, split) for split in snap.SPLITS}
        for split, frame in frames.items():
            assert list(frame.columns) == snap.COLUMNS
            assert manifest["rows"][split] == len(frame)
            assert manifest["counts"][split] == frame["label"].value_counts().sort_index().to_dict()
        # The content hash covers exactly the rows stored in the three files.
        rows = {
            s: [CleanRow(t, lab, src, int(n)) for t, lab, src, n, _ in f.itertuples(index=False)]
            for s, f in frames.items()
        }
        assert manifest["content_hash"] == snap.content_hash(rows)
        assert manifest["batch"]["snapshot"] == sid
    first = snap.load_manifest(cfg.snapshots_dir, "snap-0001")
    assert sorted(first.labels) == sorted(pd.read_csv(bundled["base"])["label"].unique())
    assert first.rows == {"train": 440, "eval": 110, "golden": 50}  # per label: 5 golden, 11 eval, 44 train


def test_split_is_stratified_and_seeded(tmp_path: Path, bundled: dict[str, Path]) -> None:
    # The same rows in another order, in another file, cut the same split with the same seed.
    shuffled = pd.read_csv(bundled["base"]).sample(frac=1.0, random_state=7)
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ingest([bundled["base"]], IngestConfig(home=a))
    ingest([tmp_path / "shuffled.csv"], IngestConfig(home=b))
    ingest([bundled["base"]], IngestConfig(home=c, seed=14))
    for split in snap.SPLITS:
        assert keys(a, split) == keys(b, split)
    assert keys(a, "eval") != keys(c, "eval")
    assert (
        snap.load_manifest(a / "snapshots", "snap-0001").content_hash
        == snap.load_manifest(b / "snapshots", "snap-0001").content_hash
    )

    # Stratified: every label splits 60 = 5 golden + 11 eval (round(55 * 0.2)) + 44 train.
    counts = snap.load_manifest(a / "snapshots", "snap-0001").counts
    assert set(counts["golden"].values()) == {5}
    assert set(counts["eval"].values()) == {11}
    assert set(counts["train"].values()) == {44}


def test_golden_set_is_frozen_across_snapshots(home: Path, bundled: dict[str, Path], tmp_path: Path) -> None:
    cfg = IngestConfig(home=home)
    ingest([bundled["base"]], cfg)
    golden_1 = snap.load_golden(cfg.snapshots_dir).drop(columns="snapshot")

    ingest([bundled["drift-1"]], cfg)  # existing labels only: the golden set must not move
    pd.testing.assert_frame_equal(snap.load_golden(cfg.snapshots_dir).drop(columns="snapshot"), golden_1)
    assert snap.load_split(cfg.snapshots_dir, "snap-0002", "golden").empty
    schema = [pq.read_schema(cfg.snapshots_dir / s / "golden.parquet") for s in ("snap-0001", "snap-0002")]
    assert schema[0].equals(schema[1])  # an empty split keeps the string columns' types

    third = ingest([bundled["drift-2"]], cfg)  # brings cancel_subscription
    golden_3 = snap.load_golden(cfg.snapshots_dir)
    pd.testing.assert_frame_equal(
        golden_3[golden_3["snapshot"] == "snap-0001"].drop(columns="snapshot"), golden_1
    )
    added = golden_3[golden_3["snapshot"] == third.snapshot]
    assert set(added["label"]) == {NEW_INTENT} and len(added) == cfg.golden_per_label

    golden_keys = keys(home, "golden")
    assert not golden_keys & (keys(home, "train") | keys(home, "eval"))

    # A golden row sent again is a duplicate: it can never reach train through a later batch.
    golden_1.head(3)[["text", "label"]].to_csv(tmp_path / "again.csv", index=False)
    again = ingest([tmp_path / "again.csv"], cfg)
    assert (again.accepted, again.duplicates, again.snapshot) == (0, 3, None)


def test_a_label_arriving_a_few_rows_at_a_time_fills_its_golden_quota(home: Path, tmp_path: Path) -> None:
    # Before: golden rows only from a batch bringing 3 x 5 = 15 rows of the label at once, so an
    # intent that arrives 4 rows a time (feedback, a rare intent) was never guarded against forgetting.
    cfg = IngestConfig(home=home, settle_seconds=0)
    held: list[int] = []
    for batch in range(6):
        rows = [{"text": f"rare request {batch} number {i}", "label": "rare"} for i in range(4)]
        rows += [{"text": f"common request {batch} number {i}", "label": "common"} for i in range(20)]
        path = tmp_path / f"batch-{batch}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        assert_balanced(ingest([path], cfg))
        golden = snap.load_golden(cfg.snapshots_dir)
        held.append(int((golden["label"] == "rare").sum()))
        assert int((golden["label"] == "common").sum()) == cfg.golden_per_label  # full from batch 1
    # A third of each batch's 4 rows (1) until the quota of 5 is full; golden rows never train.
    assert held == [1, 2, 3, 4, 5, 5]
    assert not keys(home, "golden") & (keys(home, "train") | keys(home, "eval"))


# --- BANKING77 -----------------------------------------------------------------------------------


def test_banking77_ingest_and_reingest(home: Path, banking77_dir: Path, tmp_path: Path) -> None:
    cfg = IngestConfig(home=home, label_column="category")
    train = banking77_dir / "train.csv"
    first = ingest([train], cfg)
    assert first.rows == 10_003
    assert_balanced(first)
    assert first.accepted > 9_900
    assert len(snap.load_manifest(cfg.snapshots_dir, first.snapshot).labels) == 77

    again = ingest([train], cfg)  # same bytes: recognised by hash, not even counted as rows
    assert again.skipped_files == [str(train)]
    assert (again.rows, again.accepted, again.snapshot) == (0, 0, None)

    # Same rows, other order and name: new bytes, so every row is read, and every row is a duplicate.
    rows = pd.read_csv(train).sample(frac=1.0, random_state=1)
    rows.to_csv(tmp_path / "banking77-copy.csv", index=False)
    copy = ingest([tmp_path / "banking77-copy.csv"], cfg)
    assert_balanced(copy)
    assert (copy.rows, copy.accepted, copy.snapshot) == (10_003, 0, None)
    assert copy.quarantined == first.quarantined
    assert snap.snapshot_ids(cfg.snapshots_dir) == ["snap-0001"]


# --- bad input -----------------------------------------------------------------------------------

# (line, reason) for each bad row of MIXED_CSV; lines count the header as line 1.
MIXED_CSV = b"".join(
    [
        b"text,label\n",
        b"where is my parcel,track_order\n",  # 2 accepted
        b",track_order\n",  # 3
        b'"   \t ",track_order\n',  # 4
        b"cancel it now,\n",  # 5
        b"bad bytes \xff\xfe here,track_order\n",  # 6
        b"y" * 2500 + b",track_order\n",  # 7
        b"too,many,fields\n",  # 8
        b"Is it raining,track_order\n",  # 9 conflict
        b"is it   RAINING,cancel_order\n",  # 10 conflict: same text once normalised and case-folded
        b"good row,track_order\n",  # 11 accepted
        b"good row,track_order\n",  # 12 duplicate
        b"Good  Row,track_order\n",  # 13 duplicate
        b"\n",  # a blank line is not a row
        b"fine text,oops!\n",  # 15
        b'"a quoted row\nover two lines",\n',  # 16-17 missing label, reported at its first line
        b"last good row,cancel_order\n",  # 18 accepted
    ]
)
MIXED_BAD = {
    3: "empty_text",
    4: "empty_text",
    5: "missing_label",
    6: "invalid_utf8",
    7: "text_too_long",
    8: "malformed_row",
    9: "label_conflict",
    10: "label_conflict",
    15: "invalid_label",
    16: "missing_label",
}


def test_mixed_bad_csv_quarantines_each_row_with_reason_and_line(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(MIXED_CSV)
    summary = ingest([path], IngestConfig(home=home))
    assert_balanced(summary)
    assert (summary.rows, summary.accepted, summary.duplicates, summary.quarantined) == (15, 3, 2, 10)
    assert summary.reasons == {
        "empty_text": 2,
        "invalid_label": 1,
        "invalid_utf8": 1,
        "label_conflict": 2,
        "malformed_row": 1,
        "missing_label": 2,
        "text_too_long": 1,
    }
    # A person opens the report: strict UTF-8, a header, one row per quarantined row.
    with open(summary.quarantine_report, encoding="utf-8", newline="") as handle:
        report = list(csv.DictReader(handle))
    assert list(report[0]) == ["source", "line", "reason", "detail", "label", "text"]
    assert {int(r["line"]): r["reason"] for r in report} == MIXED_BAD
    assert {r["source"] for r in report} == {str(path)}
    by_line = {int(r["line"]): r for r in report}
    assert by_line[6]["text"] == "bad bytes \ufffd\ufffd here"
    assert by_line[7]["detail"] == "2500 characters > 2000"
    assert by_line[8]["text"] == "too,many,fields"
    assert {by_line[9]["label"], by_line[10]["label"]} == {"track_order", "cancel_order"}
    assert by_line[15]["label"] == "oops!"
    stored = snap.load_split(home / "snapshots", summary.snapshot, "train")
    stored = pd.concat([stored, snap.load_split(home / "snapshots", summary.snapshot, "eval")])
    assert sorted(stored["text"]) == ["good row", "last good row", "where is my parcel"]


def test_other_formats_and_whole_file_quarantine(home: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "nested").mkdir(parents=True)
    (inbox / "a.jsonl").write_text(
        '{"text": "track my order please", "label": "track_order"}\n'
        '{"text": "broken json", "label": \n'
        "[1, 2]\n"
        "\n"
        '{"text": "où est mon colis", "label": "track_order", "extra": 1}\n',
        encoding="utf-8",
    )
    pd.DataFrame(
        {"text": ["refund me", "", "where is my refund"], "label": ["refund_status", "x", None]}
    ).to_parquet(inbox / "nested" / "b.parquet")
    (inbox / "c.csv").write_text("utterance,intent\nhello there,greet\n", encoding="utf-8")
    (inbox / "d.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (inbox / "ignored.txt").write_text("folders only yield csv, jsonl and parquet files")
    notes = tmp_path / "notes.txt"
    notes.write_text("passed explicitly")

    cfg = IngestConfig(home=home, settle_seconds=0)  # files just written: read them now
    summary = ingest([inbox, notes], cfg)
    assert_balanced(summary)
    per_file = {Path(f.path).name: f for f in summary.files}
    assert set(per_file) == {"a.jsonl", "b.parquet", "c.csv", "d.parquet"}
    counts = {name: (f.rows, f.accepted, f.quarantined) for name, f in per_file.items()}
    assert counts == {
        "a.jsonl": (4, 2, 2),
        "b.parquet": (3, 1, 2),
        "c.csv": (0, 0, 0),
        "d.parquet": (0, 0, 0),
    }
    assert summary.reasons == {"invalid_json": 2, "empty_text": 1, "missing_label": 1}
    with open(summary.quarantine_report, encoding="utf-8") as handle:
        lines = {(Path(r["source"]).name, int(r["line"]), r["reason"]) for r in csv.DictReader(handle)}
    assert lines == {
        ("a.jsonl", 2, "invalid_json"),
        ("a.jsonl", 3, "invalid_json"),
        ("b.parquet", 2, "empty_text"),
        ("b.parquet", 3, "missing_label"),
    }

    whole = {Path(q.path).name: q.reason for q in summary.files_quarantined}
    assert whole == {"c.csv": "wrong_columns", "d.parquet": "unreadable", "notes.txt": "unsupported_format"}
    kept = home / "quarantine" / "files" / summary.batch
    c_copy = kept / f"{file_sha256(inbox / 'c.csv')[:16]}-c.csv"
    assert c_copy.read_bytes() == (inbox / "c.csv").read_bytes()
    assert (
        c_copy.with_name(c_copy.name + ".reason.txt")
        .read_text()
        .startswith("wrong_columns: expected columns 'text'")
    )
    d_reason = kept / f"{file_sha256(inbox / 'd.parquet')[:16]}-d.parquet.reason.txt"
    assert d_reason.read_text().startswith("unreadable:")

    # A corrupt file fails the same way again, so it is reported as quarantined already; a file with
    # the wrong columns is read again once the mapping is fixed.
    second = ingest(
        [inbox / "d.parquet", inbox / "c.csv"],
        IngestConfig(home=home, text_column="utterance", label_column="intent"),
    )
    already = [(Path(q.path).name, q.reason) for q in second.already_quarantined]
    assert already == [("d.parquet", "unreadable")]
    assert (second.skipped_files, second.files_quarantined) == ([], [])
    assert (second.rows, second.accepted) == (1, 1)


def test_odd_but_readable_files_are_judged_row_by_row(home: Path, tmp_path: Path) -> None:
    # A byte-order mark before the first JSON line; a 200,000-character field (over the csv
    # module's default limit of 131,072); a JSONL file with no parsable line at all.
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "first line", "label": "track_order"}\n')
    (tmp_path / "huge.csv").write_text("text,label\n" + "z" * 200_000 + ",track_order\nshort,track_order\n")
    (tmp_path / "broken.jsonl").write_text('{"text": \n{oops\n')
    summary = ingest(
        [tmp_path / "bom.jsonl", tmp_path / "huge.csv", tmp_path / "broken.jsonl"], IngestConfig(home=home)
    )
    assert summary.files_quarantined == []
    assert_balanced(summary)
    assert (summary.rows, summary.accepted) == (5, 2)
    assert summary.reasons == {"text_too_long": 1, "invalid_json": 2}


def test_missing_input_is_the_callers_error(home: Path, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="input not found"):
        ingest([tmp_path / "nope.csv"], IngestConfig(home=home))
    with pytest.raises(IngestError, match="landing folder"):
        ingest([], IngestConfig(home=home))


# --- crash safety under a real kill -9 -----------------------------------------------------------

# The child pauses at a chosen point, tells the parent through a marker file, and waits to be killed.
CHILD = """
import sys, time
from pathlib import Path
import tuneloop.data.snapshot as snap
from tuneloop.data.ingest import IngestConfig, ingest

home, source, marker, where = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]

def pause(note):
    marker.write_text(str(note))
    time.sleep(120)

hook = written = None
if where == "before_rename":
    hook = pause
elif where.startswith("after_file:"):  # mid-write: some files of the new snapshot exist, not all
    def written(path):
        if path.name == where.split(":", 1)[1]:
            pause(path)
elif where == "before_ledger":
    write = snap.write_json_atomic
    def write_after_pause(path, data):
        if path.parent.name == "ledger":
            pause(path)
        write(path, data)
    snap.write_json_atomic = write_after_pause
ingest([source], IngestConfig(home=home, label_column=sys.argv[5]), before_commit=hook, file_written=written)
"""


def run_and_kill(
    home: Path, source: Path, where: str, tmp_path: Path, label_column: str = "label"
) -> tuple[int, str]:
    """Start ingest in a child, SIGKILL it once it reaches `where`; return its exit code and note."""
    marker = tmp_path / f"marker-{where}-{time.monotonic_ns()}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), str(source), str(marker), where, label_column],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"child exited {child.returncode} early: {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("child never reached the kill point")
            time.sleep(0.01)
        time.sleep(0.05)  # the marker is written before the pause: let the child reach the sleep
        os.kill(child.pid, signal.SIGKILL)
        return child.wait(timeout=30), marker.read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def assert_no_partial_snapshot(snapshots_dir: Path) -> None:
    for folder in snapshots_dir.iterdir() if snapshots_dir.is_dir() else []:
        assert folder.name.startswith(("snap-", snap.TMP_PREFIX)), folder
        if folder.name.startswith("snap-"):
            assert {p.name for p in folder.iterdir()} == SPLIT_FILES
            manifest = snap.load_manifest(snapshots_dir, folder.name)
            for split in snap.SPLITS:
                assert len(snap.load_split(snapshots_dir, folder.name, split)) == manifest.rows[split]


def test_kill_before_rename_leaves_no_snapshot(home: Path, bundled: dict[str, Path], tmp_path: Path) -> None:
    cfg = IngestConfig(home=home)
    assert run_and_kill(home, bundled["base"], "before_rename", tmp_path)[0] == -signal.SIGKILL
    leftovers = list(cfg.snapshots_dir.iterdir())
    assert snap.snapshot_ids(cfg.snapshots_dir) == []
    assert [p.name[: len(snap.TMP_PREFIX)] for p in leftovers] == [snap.TMP_PREFIX]
    assert {p.name for p in leftovers[0].iterdir()} == SPLIT_FILES  # complete, yet invisible
    assert ledger_records(cfg) == []

    summary = ingest([bundled["base"]], cfg)
    assert (summary.accepted, summary.snapshot) == (600, "snap-0001")
    assert_balanced(summary)
    assert [p.name for p in cfg.snapshots_dir.iterdir()] == ["snap-0001"]
    clean = ingest([bundled["base"]], IngestConfig(home=tmp_path / "never-killed"))
    assert (
        snap.load_manifest(cfg.snapshots_dir, "snap-0001").content_hash
        == snap.load_manifest(tmp_path / "never-killed" / "snapshots", clean.snapshot).content_hash
    )
    assert_no_partial_snapshot(cfg.snapshots_dir)


def test_kill_after_rename_before_ledger_is_recovered(
    home: Path, bundled: dict[str, Path], tmp_path: Path
) -> None:
    cfg = IngestConfig(home=home)
    assert run_and_kill(home, bundled["base"], "before_ledger", tmp_path)[0] == -signal.SIGKILL
    assert snap.snapshot_ids(cfg.snapshots_dir) == ["snap-0001"]
    assert_no_partial_snapshot(cfg.snapshots_dir)
    assert ledger_records(cfg) == []

    again = ingest([bundled["base"]], cfg)  # the ledger is rebuilt from the manifest: no double count
    assert again.skipped_files == [str(bundled["base"])]
    assert (again.rows, again.accepted, again.snapshot) == (0, 0, None)
    assert snap.snapshot_ids(cfg.snapshots_dir) == ["snap-0001"]
    recovered = [r for r in ledger_records(cfg) if r.get("snapshot") == "snap-0001"]
    assert len(recovered) == 1 and recovered[0]["accepted"] == 600

    later = ingest([bundled["drift-1"]], cfg)
    assert (later.accepted, later.snapshot) == (100, "snap-0002")
    assert not list((home / "ledger").glob(f"{snap.TMP_PREFIX}*"))


@pytest.mark.parametrize("written", ["train.parquet", "golden.parquet"])
def test_kill_mid_write_keeps_the_old_snapshot_set(
    home: Path, bundled: dict[str, Path], tmp_path: Path, written: str
) -> None:
    cfg = IngestConfig(home=home)
    ingest([bundled["base"]], cfg)
    old = {p.name: p.read_bytes() for p in (cfg.snapshots_dir / "snap-0001").iterdir()}

    # The child stops right after writing `written` into the new snapshot, and is killed there.
    code, note = run_and_kill(home, bundled["drift-1"], f"after_file:{written}", tmp_path)
    assert code == -signal.SIGKILL
    partial = Path(note).parent
    on_disk = {p.name for p in partial.iterdir()}
    assert written in on_disk and "manifest.json" not in on_disk  # the kill landed mid-write

    assert snap.snapshot_ids(cfg.snapshots_dir) == ["snap-0001"]
    assert {p.name: p.read_bytes() for p in (cfg.snapshots_dir / "snap-0001").iterdir()} == old
    assert_no_partial_snapshot(cfg.snapshots_dir)
    assert partial.name.startswith(snap.TMP_PREFIX)  # the half-written snapshot is invisible
    assert [r["snapshot"] for r in ledger_records(cfg)] == ["snap-0001"]

    rerun = ingest([bundled["drift-1"]], cfg)
    assert_balanced(rerun)
    assert (rerun.snapshot, rerun.accepted, rerun.skipped_files) == ("snap-0002", 100, [])
    assert snap.snapshot_ids(cfg.snapshots_dir) == ["snap-0001", "snap-0002"]
    assert sorted(p.name for p in cfg.snapshots_dir.iterdir()) == ["snap-0001", "snap-0002"]
    assert_no_partial_snapshot(cfg.snapshots_dir)


def test_two_concurrent_ingests_cut_one_snapshot(
    home: Path, bundled: dict[str, Path], tmp_path: Path
) -> None:
    # Both children start ingesting at the same moment and dwell 0.5 s before their commit, so
    # without the lock both would read an empty home and both would cut snap-0001.
    code = """
import sys, time
from pathlib import Path
from tuneloop.data.ingest import IngestConfig, ingest
home, source, ready, go = map(Path, sys.argv[1:5])
ready.touch()
while not go.exists():
    time.sleep(0.005)
summary = ingest([source], IngestConfig(home=home), before_commit=lambda tmp: time.sleep(0.5))
print(summary.accepted)
"""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(home), str(bundled["base"]), str(r), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = [c.communicate(timeout=60) for c in children]
    assert [c.returncode for c in children] == [0, 0], [err.decode()[-2000:] for _, err in outputs]
    assert sorted(int(out) for out, _ in outputs) == [0, 600]
    assert snap.snapshot_ids(home / "snapshots") == ["snap-0001"]
