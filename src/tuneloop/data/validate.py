"""Row rules: pure functions from a raw record to a clean row or a quarantine reason."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from tuneloop.data.readers import RawRecord

_WS = re.compile(r"\s+")

# Every reason a row can be quarantined for, with the sentence a person reads in the report.
REASONS: dict[str, str] = {
    "empty_text": "text is empty after whitespace normalisation",
    "missing_label": "label is missing or empty",
    "invalid_label": "label does not match the configured label pattern",
    "text_too_long": "text is longer than the configured maximum",
    "invalid_utf8": "bytes are not valid UTF-8",
    "invalid_json": "line is not a JSON object",
    "malformed_row": "row has a different number of fields than the header",
    "wrong_type": "a JSONL or Parquet value in the text or label column is not a string",
    "label_conflict": "the same text arrived with a different label",
    "personal_data": "holds personal data the privacy policy quarantines (the row is stored redacted)",
}


@dataclass(frozen=True)
class Rules:
    max_text_chars: int
    label_pattern: str

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.label_pattern)


@dataclass(frozen=True)
class CleanRow:
    text: str
    label: str
    source: str
    line: int

    @property
    def key(self) -> str:
        return dedup_key(self.text, self.label)

    @property
    def text_key(self) -> str:
        return text_key(self.text)


def normalize_text(text: str) -> str:
    """NFC, then every whitespace run (newlines, tabs, NBSP) to one space, trimmed."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def text_key(text: str) -> str:
    """Identity of a text for duplicate and conflict checks: normalised and case-folded."""
    return hashlib.sha1(normalize_text(text).casefold().encode("utf-8")).hexdigest()


def dedup_key(text: str, label: str) -> str:
    return f"{text_key(text)}:{label}"


def check_record(record: RawRecord, rules: Rules, label_re: re.Pattern[str]) -> CleanRow | tuple[str, str]:
    """Return the clean row, or (reason, detail) when the record must be quarantined.

    Order matters only for which reason a row with several faults is reported under: reader
    problems first, then text, then label, so the report names the most basic fault.
    """
    if record.problem:
        return record.problem, record.detail
    text = normalize_text(record.text or "")
    if not text:
        return "empty_text", REASONS["empty_text"]
    if len(text) > rules.max_text_chars:
        return "text_too_long", f"{len(text)} characters > {rules.max_text_chars}"
    label = (record.label or "").strip()
    if not label:
        return "missing_label", REASONS["missing_label"]
    if not label_re.fullmatch(label):
        return "invalid_label", f"{label[:80]!r} does not match {rules.label_pattern}"
    return CleanRow(text=text, label=label, source=record.source, line=record.line)
