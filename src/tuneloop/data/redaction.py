"""What ingest asks of a redactor (the privacy stage's `Redactor`, passed in by steps/ingest.py).

Ingest redacts every record's text and label before anything else looks at them, so validation,
de-duplication, the snapshot and the quarantine report only ever see placeholders. A protocol, not
an import: stage packages do not import each other; the composition root hands the redactor in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Protocol

from tuneloop.data.readers import RawRecord


class Redaction(Protocol):
    @property
    def text(self) -> str: ...

    @property
    def found(self) -> dict[str, int]: ...
    @property
    def held(self) -> dict[str, int]: ...


class TextRedactor(Protocol):
    def redact(self, text: str) -> Redaction: ...
    def redact_label(self, label: str) -> Redaction: ...
    def redact_bytes(self, content: bytes) -> tuple[bytes, dict[str, int]]: ...
    def quarantine_reason(self, found: dict[str, int]) -> str | None: ...


def redact_record(
    record: RawRecord, redactor: TextRedactor, held: Counter[str]
) -> tuple[RawRecord, str | None, int]:
    """The record with its text, label and detail redacted, its quarantine reason (if any), and how
    many values were replaced in it. Adds what it held (values and placeholders) to `held`."""
    here: Counter[str] = Counter()
    done_text = redactor.redact(record.text) if record.text else None
    done_label = redactor.redact_label(record.label) if record.label else None
    text = done_text.text if done_text else record.text
    label = done_label.text if done_label else record.label
    replaced = 0
    for done in (done_text, done_label):
        if done is not None and done.held:
            replaced += sum(done.found.values())
            here.update(done.held)
    detail = record.detail
    if detail:  # a reader's detail may quote the row (a bad JSON line)
        detail = redactor.redact(detail).text
    if not here and (text, label, detail) == (record.text, record.label, record.detail):
        return record, None, 0  # nothing found: the record as it was (most rows)
    held.update(here)
    reason = redactor.quarantine_reason(dict(here)) if here else None
    return replace(record, text=text, label=label, detail=detail), reason, replaced


def redact_file(content: bytes, suffix: str, redactor: TextRedactor) -> tuple[bytes, dict[str, int]]:
    """A whole file's bytes as quarantine may keep them, and what they held.

    A Parquet table (one with the wrong columns, say) is compressed: its bytes hide the values from
    a text redactor, so every string cell is redacted and the table written again. Anything else,
    and a Parquet file that does not read as a table, is redacted line by line as text.
    """
    if suffix.lower() == ".parquet":
        import io

        import pandas as pd

        try:
            frame = pd.read_parquet(io.BytesIO(content))
        except Exception:  # unreadable: what it holds is bytes, redacted as such below
            frame = None
        if frame is not None:
            held: Counter[str] = Counter()

            def cell(value: object) -> object:
                if not isinstance(value, str):
                    return value
                done = redactor.redact(value)
                held.update(done.held)
                return done.text

            for column in frame.columns:
                frame[column] = frame[column].map(cell)
            out = io.BytesIO()
            frame.to_parquet(out, index=False)
            return out.getvalue(), dict(held)
    return redactor.redact_bytes(content)
