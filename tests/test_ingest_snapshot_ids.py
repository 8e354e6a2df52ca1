"""Snapshot ids are ordered by number: `snap-10000` comes after `snap-9999`, never before it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tuneloop.data import snapshot as snap
from tuneloop.data.ingest import IngestConfig, ingest


def _renumber(snapshots_dir: Path, old: str, new: str) -> None:
    """Rename a committed snapshot, as if 9,998 ingests had come before it."""
    (snapshots_dir / old).rename(snapshots_dir / new)
    path = snapshots_dir / new / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["id"] = manifest["batch"]["snapshot"] = new
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _drop(folder: Path, name: str, texts: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pd.DataFrame({"text": texts, "label": ["track_order"] * len(texts)}).to_csv(path, index=False)
    return path


def test_ids_past_9999_sort_by_number(home: Path, tmp_path: Path) -> None:
    cfg = IngestConfig(home=home, golden_per_label=0)
    ingest([_drop(tmp_path, "a.csv", ["where is my parcel", "has it shipped"])], cfg)
    _renumber(cfg.snapshots_dir, "snap-0001", "snap-9999")

    second = ingest([_drop(tmp_path, "b.csv", ["track my box", "any news on my order"])], cfg)
    assert second.snapshot == "snap-10000"
    assert snap.load_manifest(cfg.snapshots_dir, "snap-10000").parent == "snap-9999"
    # As text, "snap-10000" < "snap-9999": the third snapshot would be numbered 10000 again.
    third = ingest([_drop(tmp_path, "c.csv", ["where's my stuff", "order status please"])], cfg)
    assert third.snapshot == "snap-10001"
    assert snap.snapshot_ids(cfg.snapshots_dir) == ["snap-9999", "snap-10000", "snap-10001"]
    assert snap.load_manifest(cfg.snapshots_dir, "snap-10001").parent == "snap-10000"

    assert snap.snapshots_before(cfg.snapshots_dir, "snap-10001") == ["snap-9999", "snap-10000"]
    assert snap.snapshots_before(cfg.snapshots_dir, "snap-10000") == ["snap-9999"]
    assert snap.snapshots_before(cfg.snapshots_dir, "snap-9999") == []

    upto = snap.load_all(cfg.snapshots_dir, "train", upto="snap-9999")
    assert set(upto["snapshot"]) == {"snap-9999"}
    upto = snap.load_all(cfg.snapshots_dir, "train", upto="snap-10000")
    assert list(dict.fromkeys(upto["snapshot"])) == ["snap-9999", "snap-10000"]
    assert list(dict.fromkeys(snap.load_all(cfg.snapshots_dir, "eval")["snapshot"])) == [
        "snap-9999",
        "snap-10000",
        "snap-10001",
    ]


def test_unknown_upto_and_stray_folders_are_errors(home: Path, tmp_path: Path) -> None:
    cfg = IngestConfig(home=home, golden_per_label=0)
    ingest([_drop(tmp_path, "a.csv", ["where is my parcel", "has it shipped"])], cfg)
    with pytest.raises(FileNotFoundError, match="no snapshot 'snap-0002'"):
        snap.load_golden(cfg.snapshots_dir, upto="snap-0002")
    with pytest.raises(ValueError, match="not a snapshot id"):
        snap.snapshots_before(cfg.snapshots_dir, "latest")
    (cfg.snapshots_dir / "snap-0001.bak").mkdir()
    with pytest.raises(ValueError, match="not a snapshot folder"):
        snap.snapshot_ids(cfg.snapshots_dir)
