"""Atomic file output and checksums for conversion artifacts.

Every artifact is written under a temporary name in the destination folder and renamed into place
once complete. `os.replace` within one file system is atomic, so a reader (or a crash) sees either
the old file, the new file, or no file under the final name, never half of one. A process killed
mid-write leaves only a `.<name>.tmp-*` file behind, which `sweep_temporaries` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from tuneloop.files import sha256_file

TMP_MARK = ".tmp-"

__all__ = [
    "sha256_file",
    "sha256_bytes",
    "atomic_output",
    "temporary_name",
    "write_text_atomic",
    "sweep_temporaries",
]


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes already in memory."""
    return hashlib.sha256(data).hexdigest()


def temporary_name(final: Path) -> Path:
    """A hidden sibling of `final` that no reader mistakes for the artifact."""
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to `final` only if the block finishes.

    On an exception the temporary file is removed and `final` is left as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the step meant to write {final.name} wrote nothing")
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(final: Path, text: str) -> None:
    """Write a small text file (a manifest) atomically."""
    with atomic_output(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove leftovers of killed writes (`.<name>.tmp-*`) in `folder`; return what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if path.name.startswith(".") and TMP_MARK in path.name and path.is_file():
            path.unlink()
            removed.append(path)
    return removed
