"""Read CSV, JSONL and Parquet files into raw records, keeping every row's source and line.

Readers never judge a row's content (that is `validate.py`); they only report what they could not
read. A record whose bytes are not valid UTF-8 is still returned, with `problem="invalid_utf8"`, so it
is quarantined with its line number rather than taking the whole file down with it. A file that can
not be parsed at all, or whose columns do not match, comes back as a `FileRead` with `error` set and
goes to quarantine whole.

Each file is read once: its sha256 and its rows come from the same bytes, so the hash in the ledger
is the hash of exactly what was ingested. A file whose size or modification time changes while it is
read, or that is younger than the settle window, is not judged at all: it comes back `waiting` and
is read on a later poll (the landing convention is in `landing.py`).

CSV is all text. In JSONL and Parquet a value in the text or label column that is not a string (a
number, a boolean, a list, an object) means the producer is broken: such a row is quarantined as
`wrong_type` rather than turned into text.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
    waiting: str = ""  # why the file was left for a later poll (nothing else is set then)
    content: bytes | None = None  # the bytes read (None when not read), for a whole-file quarantine copy


def _has_bad_bytes(value: str) -> bool:
    return any(_SURROGATE_LO <= ord(ch) <= _SURROGATE_HI for ch in value)


def _cell(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _shown(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)[:200]
    except ValueError:  # a float nan or inf, or a circular value: show Python's spelling
        return repr(value)[:200]


def _typed_record(
    source: str,
    line: int,
    text: tuple[str, object],
    label: tuple[str, object],
    type_names: dict[str, str] | None = None,
) -> RawRecord:
    """A record from typed values (JSON, Parquet): a non-string value is a `wrong_type` row.

    `text` and `label` are (column, value read); `type_names` names each column's stored type
    (Parquet), else the JSON type of the value is named.
    """
    wrong = [(c, v) for c, v in (text, label) if v is not None and not isinstance(v, str)]
    if not wrong:
        return _record(source, line, text[1], label[1])
    detail = "; ".join(
        f"column {c!r} holds {(type_names or {}).get(c) or _json_type(v)} {_shown(v)}, expected a string"
        for c, v in wrong
    )
    text_shown, label_shown = _shown(text[1]), _shown(label[1])
    return RawRecord(source, line, _cell(text_shown), _cell(label_shown), "wrong_type", detail)


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


def _read_csv(raw: bytes, text_col: str, label_col: str, out: FileRead) -> None:
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
    source = str(out.path)
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


def _read_jsonl(raw: bytes, text_col: str, label_col: str, out: FileRead) -> None:
    source = str(out.path)
    lines = io.BytesIO(raw).readlines()  # split on b"\n" only, as reading the file line by line
    for line_no, raw_line in enumerate(lines, start=1):
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
            out.records.append(RawRecord(source, line_no, line.strip()[:200], None, "invalid_json", str(exc)))
            continue
        if not isinstance(obj, dict):
            out.records.append(
                RawRecord(source, line_no, line.strip()[:200], None, "invalid_json", "not a JSON object")
            )
            continue
        text, label = (text_col, obj.get(text_col)), (label_col, obj.get(label_col))
        out.records.append(_typed_record(source, line_no, text, label))
    # A JSONL file where no object carries the mapped columns is a mapping mistake, not bad rows.
    # A file with no parsable object at all is bad rows (invalid_json), not a mapping mistake.
    parsed = [r for r in out.records if not r.problem]
    if parsed and not any(r.text is not None or r.label is not None for r in parsed):
        keys: set[str] = set()
        for raw_line in lines:
            try:
                obj = json.loads(raw_line)
                keys.update(obj.keys() if isinstance(obj, dict) else [])
            except (ValueError, UnicodeDecodeError):
                pass
        problem = _missing_columns(sorted(keys), text_col, label_col)
        if problem:
            out.error, out.detail = "wrong_columns", problem
            out.records.clear()


def _read_parquet(raw: bytes, text_col: str, label_col: str, out: FileRead) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except Exception as exc:  # pyarrow raises several types for corrupt files
        out.error, out.detail = "unreadable", f"not a readable Parquet file: {exc}"
        return
    problem = _missing_columns(table.column_names, text_col, label_col)
    if problem:
        out.error, out.detail = "wrong_columns", problem
        return
    texts = table.column(text_col).to_pylist()
    labels = table.column(label_col).to_pylist()
    types = {
        text_col: str(table.schema.field(text_col).type),
        label_col: str(table.schema.field(label_col).type),
    }
    source = str(out.path)
    # Parquet has no text lines; "line" is the 1-based row number.
    out.records.extend(
        _typed_record(source, i + 1, (text_col, t), (label_col, lab), types)
        for i, (t, lab) in enumerate(zip(texts, labels, strict=True))
    )


def _read_once(path: Path, settle_seconds: float, now: float) -> tuple[bytes, str]:
    """The file's bytes, read once without following a link, or (b"", why it must wait)."""
    # O_NOFOLLOW: a link swapped in after the folder was listed is refused, not followed.
    # O_NONBLOCK: opening a FIFO named like a data file returns at once instead of hanging.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        wait = settle_wait(now - before.st_mtime, settle_seconds)
        if wait:
            return b"", wait
        with os.fdopen(os.dup(fd), "rb") as handle:
            raw = handle.read()
        after = os.fstat(fd)
    finally:
        os.close(fd)
    changed = (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
    if changed or len(raw) != after.st_size:
        return b"", "changed while it was being read; read again once it is still"
    return raw, ""


def settle_wait(age_seconds: float, settle_seconds: float) -> str | None:
    """Why a file modified `age_seconds` ago must wait, or None when it has settled."""
    if age_seconds >= settle_seconds:
        return None
    return f"modified {age_seconds:.1f} s ago; read once it has been still for {settle_seconds:g} s"


def read_file(
    path: Path, text_col: str, label_col: str, settle_seconds: float = 0.0, now: float | None = None
) -> FileRead:
    """Read one supported file once. Never raises for bad content: problems are on the result.

    A file younger than `settle_seconds` (by modification time, against `now`, default the
    clock), or one that changed while being read, comes back with `waiting` set and nothing read.
    """
    out = FileRead(path=path, sha256="")
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    try:
        raw, out.waiting = _read_once(path, settle_seconds, time.time() if now is None else now)
    except OSError as exc:
        link = exc.errno == errno.ELOOP
        out.error = "symlink" if link else "unreadable"
        out.detail = "a symbolic link; links are never followed" if link else str(exc)
        return out
    if out.waiting:
        return out
    out.sha256, out.content = hashlib.sha256(raw).hexdigest(), raw
    if kind == "csv":
        _read_csv(raw, text_col, label_col, out)
    elif kind == "jsonl":
        _read_jsonl(raw, text_col, label_col, out)
    elif kind == "parquet":
        _read_parquet(raw, text_col, label_col, out)
    else:
        out.error, out.detail = "unsupported_format", f"suffix {path.suffix!r} is not csv, jsonl or parquet"
    return out


def iter_records(reads: list[FileRead]) -> Iterator[RawRecord]:
    for read in reads:
        if read.error is None:
            yield from read.records
