"""A JSONL or Parquet value that is not a string, in the text or label column, is a `wrong_type` row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tuneloop.data.ingest import IngestConfig, ingest


def report(path: str | None) -> dict[tuple[str, int], dict[str, str]]:
    with open(path or "", encoding="utf-8", newline="") as handle:
        return {(Path(r["source"]).name, int(r["line"])): r for r in csv.DictReader(handle)}


def test_typed_values_are_quarantined_not_coerced(home: Path, tmp_path: Path) -> None:
    rows = [
        {"text": "where is my parcel", "label": "track_order"},  # 1 accepted
        {"text": 42, "label": "track_order"},  # 2
        {"text": "has it shipped", "label": 7},  # 3
        {"text": "refund please", "label": True},  # 4
        {"text": ["where", "is", "it"], "label": "track_order"},  # 5
        {"text": "cancel it", "label": {"name": "cancel_order"}},  # 6
        {"text": 1.5, "label": 2},  # 7: both columns named in the detail
        {"text": "no label at all", "label": None},  # 8: null is missing, not a wrong type
    ]
    (tmp_path / "drop.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    table = pa.table(
        {"text": ["where is my refund", "is my refund coming"], "label": pa.array([3, None], pa.int64())}
    )
    pq.write_table(table, tmp_path / "drop.parquet")
    # CSV is all text: "42" is a text and "7" a label, as written.
    (tmp_path / "drop.csv").write_text("text,label\n42,track_order\nhello there,7\n", encoding="utf-8")

    summary = ingest(
        [tmp_path / "drop.jsonl", tmp_path / "drop.parquet", tmp_path / "drop.csv"],
        IngestConfig(home=home, golden_per_label=0),
    )
    assert summary.accepted + summary.duplicates + summary.quarantined == summary.rows
    assert summary.reasons == {"wrong_type": 7, "missing_label": 2}
    assert summary.accepted == 3  # one JSONL row and both CSV rows

    bad = report(summary.quarantine_report)
    assert {k: r["reason"] for k, r in bad.items()} == {
        ("drop.jsonl", 2): "wrong_type",
        ("drop.jsonl", 3): "wrong_type",
        ("drop.jsonl", 4): "wrong_type",
        ("drop.jsonl", 5): "wrong_type",
        ("drop.jsonl", 6): "wrong_type",
        ("drop.jsonl", 7): "wrong_type",
        ("drop.jsonl", 8): "missing_label",
        ("drop.parquet", 1): "wrong_type",
        ("drop.parquet", 2): "missing_label",
    }
    assert bad[("drop.jsonl", 2)]["detail"] == "column 'text' holds number 42, expected a string"
    assert bad[("drop.jsonl", 3)]["detail"] == "column 'label' holds number 7, expected a string"
    assert bad[("drop.jsonl", 4)]["detail"] == "column 'label' holds boolean true, expected a string"
    assert bad[("drop.jsonl", 5)]["detail"].startswith("column 'text' holds array [")
    assert bad[("drop.jsonl", 6)]["detail"].startswith("column 'label' holds object {")
    assert bad[("drop.jsonl", 7)]["detail"] == (
        "column 'text' holds number 1.5, expected a string; column 'label' holds number 2, expected a string"
    )
    assert bad[("drop.parquet", 1)]["detail"] == "column 'label' holds int64 3, expected a string"
    # The report shows what arrived, in JSON spelling.
    assert (bad[("drop.jsonl", 4)]["text"], bad[("drop.jsonl", 4)]["label"]) == ("refund please", "true")
