"""Read CSV, JSONL and Parquet files into raw records, keeping every row's source and line.

Readers never judge a row's content (that is `validate.py`); they only report what they could not
read. A record whose bytes are not valid UTF-8 is still returned, with `problem="invalid_utf8"`, so it
is quarantined with its line number rather than taking the whole file down with it. A file that can
not be parsed at all, or whose columns do not match, comes back as a `FileRead` with `error` set and
goes to quarantine whole.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.files import sha256_file

SUPPORTED_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}

# Lone surrogates are how `errors="surrogateescape"` carries undecodable bytes through a str.
_SURROGATE_LO, _SURROGATE_HI = 0xDC80, 0xDCFF


@dataclass(frozen=True)
class RawRecord:
    """One row as read: values are None when the column was absent or empty in that row."""

    source: str
    line: int
    text: str | None
    label: str | None
    problem: str | None = None  # set by the reader: invalid_utf8, invalid_json, ...
    detail: str = ""


@dataclass
class FileRead:
    path: Path
    sha256: str
    records: list[RawRecord] = field(default_factory=list)
    error: str | None = None  # reason the whole file is quarantined
    detail: str = ""


def find_input_files(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Expand folders (recursively, sorted) into supported files; return (files, unsupported)."""
    files: list[Path] = []
    unsupported: list[Path] = []
    for path in paths:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            if candidate.name.startswith("."):
                continue
            if candidate.suffix.lower() in SUPPORTED_SUFFIXES:
                files.append(candidate)
            elif not path.is_dir():
                unsupported.append(candidate)
    return files, unsupported


def _has_bad_bytes(value: str) -> bool:
    return any(_SURROGATE_LO <= ord(ch) <= _SURROGATE_HI for ch in value)


def _cell(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _record(source: str, line: int, text: object, label: object) -> RawRecord:
    text_s, label_s = _cell(text), _cell(label)
    if any(v is not None and _has_bad_bytes(v) for v in (text_s, label_s)):
        # Keep the row visible in quarantine: undecodable bytes shown as U+FFFD.
        safe = [
            None if v is None else v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            for v in (text_s, label_s)
        ]
        return RawRecord(source, line, safe[0], safe[1], "invalid_utf8", "bytes are not valid UTF-8")
    return RawRecord(source, line, text_s, label_s)


def _missing_columns(found: list[str], text_col: str, label_col: str) -> str | None:
    missing = [c for c in (text_col, label_col) if c not in found]
    if not missing:
        return None
    return f"expected columns {text_col!r} and {label_col!r}; missing {missing}; found {found}"


def _read_csv(path: Path, text_col: str, label_col: str, out: FileRead) -> None:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    content = raw.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        out.error, out.detail = "empty_file", "the file has no header row"
        return
    header = [h.strip() for h in header]
    problem = _missing_columns(header, text_col, label_col)
    if problem:
        out.error, out.detail = "wrong_columns", problem
        return
    # The csv module refuses fields over 131,072 characters by default, which would turn one
    # over-long row into an unreadable file; no field can be longer than the whole file.
    if csv.field_size_limit() < len(content):
        csv.field_size_limit(len(content))
    t_i, l_i = header.index(text_col), header.index(label_col)
    source = str(path)
    ended = reader.line_num
    try:
        for row in reader:
            # A quoted field may span lines; report the line the row starts on, as an editor shows it.
            line, ended = ended + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line is not a row
            if len(row) != len(header):
                # The raw row goes in the text column of the report, so a person sees what arrived.
                shown = ",".join(row).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                out.records.append(
                    RawRecord(
                        source,
                        line,
                        shown[:200],
                        None,
                        "malformed_row",
                        f"{len(row)} fields where the header has {len(header)}",
                    )
                )
                continue
            out.records.append(_record(source, line, row[t_i], row[l_i]))
    except csv.Error as exc:
        out.error, out.detail = "unreadable", f"CSV parse error near line {reader.line_num}: {exc}"
        out.records.clear()


def _read_jsonl(path: Path, text_col: str, label_col: str, out: FileRead) -> None:
    source = str(path)
    with path.open("rb") as handle:
        for line_no, raw_line in enumerate(handle, start=1):
            if not raw_line.strip():
                continue
            try:
                # utf-8-sig on the first line: editors on Windows start files with a byte-order mark.
                line = raw_line.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError:
                shown = raw_line.decode("utf-8", "replace").strip()
                out.records.append(
                    RawRecord(source, line_no, shown[:200], None, "invalid_utf8", "bytes are not valid UTF-8")
                )
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                out.records.append(
                    RawRecord(source, line_no, line.strip()[:200], None, "invalid_json", str(exc))
                )
                continue
            if not isinstance(obj, dict):
                out.records.append(
                    RawRecord(source, line_no, line.strip()[:200], None, "invalid_json", "not a JSON object")
                )
                continue
            out.records.append(_record(source, line_no, obj.get(text_col), obj.get(label_col)))
    # A JSONL file where no object carries the mapped columns is a mapping mistake, not bad rows.
    # A file with no parsable object at all is bad rows (invalid_json), not a mapping mistake.
    parsed = [r for r in out.records if not r.problem]
    if parsed and not any(r.text is not None or r.label is not None for r in parsed):
        keys: set[str] = set()
        with path.open("rb") as handle:
            for raw_line in handle:
                try:
                    obj = json.loads(raw_line)
                    keys.update(obj.keys() if isinstance(obj, dict) else [])
                except (ValueError, UnicodeDecodeError):
                    pass
        problem = _missing_columns(sorted(keys), text_col, label_col)
        if problem:
            out.error, out.detail = "wrong_columns", problem
            out.records.clear()


def _read_parquet(path: Path, text_col: str, label_col: str, out: FileRead) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        out.error, out.detail = "unreadable", f"not a readable Parquet file: {exc}"
        return
    problem = _missing_columns(table.column_names, text_col, label_col)
    if problem:
        out.error, out.detail = "wrong_columns", problem
        return
    texts = table.column(text_col).to_pylist()
    labels = table.column(label_col).to_pylist()
    source = str(path)
    # Parquet has no text lines; "line" is the 1-based row number.
    out.records.extend(
        _record(source, i + 1, t, lab) for i, (t, lab) in enumerate(zip(texts, labels, strict=True))
    )


def read_file(path: Path, text_col: str, label_col: str) -> FileRead:
    """Read one supported file. Never raises for bad content: problems are recorded on the result."""
    out = FileRead(path=path, sha256=sha256_file(path))
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    try:
        if kind == "csv":
            _read_csv(path, text_col, label_col, out)
        elif kind == "jsonl":
            _read_jsonl(path, text_col, label_col, out)
        elif kind == "parquet":
            _read_parquet(path, text_col, label_col, out)
        else:
            out.error, out.detail = (
                "unsupported_format",
                f"suffix {path.suffix!r} is not csv, jsonl or parquet",
            )
    except OSError as exc:
        out.error, out.detail = "unreadable", str(exc)
        out.records.clear()
    return out


def iter_records(reads: list[FileRead]) -> Iterator[RawRecord]:
    for read in reads:
        if read.error is None:
            yield from read.records
