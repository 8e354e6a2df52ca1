"""A messy drop for the demo and tests: one row of each fault ingest quarantines, plus a few others.

No single file can hold every fault: a row with the wrong number of fields exists only in CSV, and
broken JSON or a typed value only in JSONL (CSV is all text). So the drop is two files:
- `messy.csv`: empty_text, text_too_long, missing_label, invalid_label, invalid_utf8, malformed_row,
  label_conflict (a base text, case changed, with another label), one exact duplicate of a base
  row, and one good row;
- `messy.jsonl`: invalid_json, wrong_type (a number as the label), and one good row.
Ingested after the bundled `base` batch that is 12 rows: 2 accepted + 1 duplicate + 9 quarantined,
one for each reason in `validate.REASONS`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tuneloop.data.bundled import bundled_frames


def write_messy(target_dir: Path, seed: int = 0) -> list[Path]:
    """Write `messy.csv` and `messy.jsonl` under `target_dir`; return their paths."""
    base = bundled_frames(seed)["base"]
    (dup_text, dup_label), (conflict_text, conflict_label) = base.iloc[0], base.iloc[1]
    other_label = next(label for label in sorted(set(base["label"])) if label != conflict_label)
    rows = [
        ("   ", "track_order"),  # empty_text after whitespace normalisation
        ("x" * 2500, "track_order"),  # text_too_long: over the 2,000-character default
        ("where is my refund for the blue kettle", ""),  # missing_label
        ("cancel it now!!", "cancel order!"),  # invalid_label: "!" is outside the pattern
        (dup_text, dup_label),  # an exact duplicate of a base row
        (conflict_text.upper(), other_label),  # label_conflict: a base text with another label
        ("hey can u tell me where my package is rn", "track_order"),  # a good row
    ]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([("text", "label"), *rows])
    raw = text.getvalue().encode("utf-8")
    raw += b"my card got declined \xff\xfe at checkout,payment_failed\n"  # invalid_utf8
    raw += b"too,many,fields\n"  # malformed_row: three fields where the header has two
    target_dir.mkdir(parents=True, exist_ok=True)
    csv_path, jsonl_path = target_dir / "messy.csv", target_dir / "messy.jsonl"
    csv_path.write_bytes(raw)
    jsonl_path.write_text(
        '{"text": "where is my parcel", "label": \n'  # invalid_json: the line stops mid-object
        + json.dumps({"text": "i need my money back for the lamp", "label": 3})  # wrong_type
        + "\n"
        + json.dumps({"text": "pls change where my order goes to my office", "label": "change_address"})
        + "\n",
        encoding="utf-8",
    )
    return [csv_path, jsonl_path]
