"""Shared fixtures: a fresh TUNELOOP home, and BANKING77 where the shared data folder has it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BANKING77_DIR = REPO_ROOT.parent / "shared" / "data" / "banking77"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A TUNELOOP home that does not exist yet: each stage creates what it writes."""
    return tmp_path / "home"


@pytest.fixture(scope="session")
def banking77_dir() -> Path:
    """`../shared/data/banking77` beside the repository; tests that need it skip when it is absent."""
    if not (BANKING77_DIR / "train.csv").is_file():
        pytest.skip(f"BANKING77 is not at {BANKING77_DIR} (the repository ships no copy of it)")
    return BANKING77_DIR
