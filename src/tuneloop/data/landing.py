"""Which files an ingest reads: the landing convention.

Writers drop files into the landing folder (or any folder passed to `tuneloop ingest`) in two steps:
write the file under an in-flight name, then rename it to its final name on the same file system,
where a rename is atomic. In-flight names are never read:
- a name starting with `.` (a dotfile, or anything inside a dot-folder such as `landing/.incoming/`);
- a name ending in `.tmp` or `.part`.

A writer that cannot rename (it writes the final name in place) is covered by the settle window: a
file found in a folder whose modification time is less than `settle_seconds` old (default 2 s) is
left where it is and reported as waiting; the next poll reads it once it has been still that long.
A clock skewed into the future delays a file until the clock catches up, never reads it early.
Files named explicitly are taken as complete (the caller said so); every file, named or found, is
read once, and a file whose size or modification time changed while it was read is waiting too.

Symbolic links are refused, file or folder, and never followed: a link would let the ingest worker
read any file it can (another user's data, a secret). Links found in a folder are quarantined whole
with reason `symlink`; a link named explicitly is the caller's error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.data.readers import SUPPORTED_SUFFIXES

IN_FLIGHT_SUFFIXES = (".tmp", ".part")


def is_in_flight(name: str) -> bool:
    """True for a name a writer uses while the file is still being written."""
    return name.startswith(".") or name.lower().endswith(IN_FLIGHT_SUFFIXES)


@dataclass
class Inputs:
    """What a set of paths expands to, sorted by path."""

    files: list[Path] = field(default_factory=list)  # supported files to read
    found_in_folders: set[Path] = field(default_factory=set)  # files the settle window applies to
    unsupported: list[Path] = field(default_factory=list)  # named files with another suffix
    symlinks: list[Path] = field(default_factory=list)  # links found in folders: refused
    in_flight: list[Path] = field(default_factory=list)  # named files with an in-flight name


def _walk(folder: Path, found: Inputs) -> None:
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            path = Path(entry.path)
            if is_in_flight(entry.name):
                continue
            if entry.is_symlink():
                found.symlinks.append(path)
            elif entry.is_dir(follow_symlinks=False):
                _walk(path, found)
            elif entry.is_file(follow_symlinks=False) and path.suffix.lower() in SUPPORTED_SUFFIXES:
                found.files.append(path)
                found.found_in_folders.add(path)


def find_inputs(paths: list[Path]) -> Inputs:
    """Expand folders (recursively, links not followed) into the files an ingest should read.

    Explicit paths must already have been checked not to be links (`resolve_inputs`).
    """
    found = Inputs()
    for path in paths:
        if path.is_dir():
            _walk(path, found)
        elif is_in_flight(path.name):
            found.in_flight.append(path)
        elif path.suffix.lower() in SUPPORTED_SUFFIXES:
            found.files.append(path)
        else:
            found.unsupported.append(path)
    found.files = sorted(dict.fromkeys(found.files))  # a file named and also found in a folder: once
    found.symlinks.sort()
    return found
