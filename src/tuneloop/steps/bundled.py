"""Step: the bundled support-intent data as drops into a landing folder (what `tuneloop demo` lands).

The data stage writes the batches (data/bundled.py) and the messy files that exercise every
quarantine reason (data/messy.py); this step hands a front-end the files to land, in order, with
the (text, label) pairs each one carries for synthetic traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Drop:
    """One bundled batch: its name, its file, and its (text, label) rows."""

    name: str
    path: Path
    samples: list[tuple[str, str]]
    messy: bool  # land the messy files beside it (the first drift batch)


def bundled_drops(folder: Path) -> list[Drop]:
    """Write the bundled batches as CSV files under `folder`; the drops in landing order."""
    from tuneloop.data.bundled import BATCHES, bundled_frames, write_bundled

    files, frames = write_bundled(folder), bundled_frames()
    return [
        Drop(
            name,
            files[name],
            list(zip(frames[name]["text"], frames[name]["label"], strict=True)),
            messy=name == "drift-1",
        )
        for name in BATCHES
    ]


def write_messy_files(landing: Path) -> list[Path]:
    """Two messy files (CSV and JSONL: no one format can hold every fault) with one row of each
    quarantine reason, a duplicate and two good rows (data/messy.py)."""
    from tuneloop.data.messy import write_messy

    return write_messy(landing)
