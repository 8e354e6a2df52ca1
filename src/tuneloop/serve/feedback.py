"""Production corrections into the landing folder, so the next ingest round learns from them.

One JSONL file per feedback row, written under an in-flight name (a leading dot, which ingest never
reads) and renamed into place: a reader sees the whole row or nothing, and writers in any number
of workers never share a file. Columns: text, label (what ingest reads), source `feedback`, and
what the service answered, for audit.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path


def write_feedback_row(landing: Path, row: dict[str, str]) -> Path:
    """Write `row` (text, label, ...) as `feedback-<time>-<random>.jsonl` in `landing`; return it."""
    landing.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    final = landing / f"feedback-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
    tmp = landing / f".{final.name}.part"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({**row, "source": "feedback"}, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    return final
