"""Scratch under `<home>/work/` cleans up after itself (steps/scratch.py).

The pruning decision on plain data; then, on the tiny random BERT, one module home: a round and a
conversion leave no folder once published; a round killed after its first epoch keeps its folder and
says where, and its retry resumes from that epoch, removes the folder, and prunes stale folders of
other rounds but never one whose `round-<key>` lock is held.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tuneloop.registry.store import Registry
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.round import train_step
from tuneloop.steps.scratch import Folder, plan_prune
from tuneloop.testing import keyword_sentences

NOW = 1_000_000.0
HOUR = 3600.0
NOW_WALL = time.time()


def _names(removals: list[Any]) -> list[str]:
    return [r.name for r in removals]


def test_plan_prune_removes_oldest_first_while_over_the_size_limit() -> None:
    folders = [
        Folder("new", 5, NOW - 1 * HOUR, busy=False),
        Folder("old", 5, NOW - 3 * HOUR, busy=False),
        Folder("mid", 5, NOW - 2 * HOUR, busy=False),
    ]
    # 15 bytes against a limit of 8: "old" (15 -> 10) then "mid" (10 -> 5); "new" stays.
    removals = plan_prune(folders, max_bytes=8, max_age_s=72 * HOUR, now=NOW)
    assert _names(removals) == ["old", "mid"]
    assert "over the" in removals[0].reason
    assert plan_prune(folders, max_bytes=15, max_age_s=72 * HOUR, now=NOW) == []


def test_plan_prune_removes_every_folder_past_the_age_limit_whatever_the_size() -> None:
    folders = [
        Folder("stale", 1, NOW - 73 * HOUR, busy=False),
        Folder("recent", 1, NOW - 71 * HOUR, busy=False),
    ]
    removals = plan_prune(folders, max_bytes=10**12, max_age_s=72 * HOUR, now=NOW)
    assert _names(removals) == ["stale"]
    assert "73.0 h ago" in removals[0].reason


def test_plan_prune_never_removes_a_busy_folder_but_counts_its_bytes() -> None:
    folders = [
        Folder("busy", 10, NOW - 100 * HOUR, busy=True),  # oldest, largest, past the age limit
        Folder("a", 3, NOW - 2 * HOUR, busy=False),
        Folder("b", 3, NOW - 1 * HOUR, busy=False),
    ]
    # 16 bytes against 14: the busy folder is skipped, "a" goes (16 -> 13) and that is enough.
    assert _names(plan_prune(folders, max_bytes=14, max_age_s=72 * HOUR, now=NOW)) == ["a"]
    # Against 12 both idle ones go and the busy one stays, even over the limit.
    assert _names(plan_prune(folders, max_bytes=12, max_age_s=72 * HOUR, now=NOW)) == ["a", "b"]


# --- on the tiny BERT ---------------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _children(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tuneloop.testing import tiny_loop_settings

    root = tmp_path_factory.mktemp("scratch")
    settings = tiny_loop_settings(root, epochs=3, continued_epochs=3)
    path = root / "base.csv"
    keyword_sentences(["alpha", "beta", "gamma"], 30, seed=0).to_csv(path, index=False)
    ingest_step(settings, [path])
    first = train_step(settings, progress=False)
    return settings, root, first


@pytest.fixture(scope="module")
def failed(world: Any) -> Any:
    """Round 2 (a new snapshot) killed right after its first epoch's checkpoint."""
    import tuneloop.train.trainer as trainer

    settings, root, _ = world
    path = root / "more.csv"
    keyword_sentences(["alpha", "beta", "gamma"], 30, seed=7).to_csv(path, index=False)
    ingest_step(settings, [path])
    real = trainer.train_round

    def killed_after_epoch_1(*args: Any, **kwargs: Any) -> Any:
        def stop(record: dict[str, float]) -> None:
            raise RuntimeError(f"killed after epoch {record['epoch']:.0f}")

        return real(*args, **kwargs, on_epoch_end=stop)

    handler = Records()
    logging.getLogger("tuneloop.scratch").addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trainer, "train_round", killed_after_epoch_1)
            with pytest.raises(RuntimeError, match="killed after epoch 1") as caught:
                train_step(settings, progress=False)
    finally:
        logging.getLogger("tuneloop.scratch").removeHandler(handler)
    kept = _children(settings.work_dir / "rounds")
    return caught.value, kept, handler.messages


@pytest.fixture(scope="module")
def retried(world: Any, failed: Any) -> Any:
    """Round 2 again, beside stale folders of other rounds, one of them with its lock held."""
    import tuneloop.train.trainer as trainer

    settings, _, _ = world
    rounds = settings.work_dir / "rounds"
    old = NOW_WALL - 100 * HOUR  # past the 72 h default
    for name in ("stale-idle", "stale-busy", "fresh-idle"):
        (rounds / name / "checkpoints").mkdir(parents=True)
        (rounds / name / "checkpoints" / "state.json").write_text("{}")
    for name in ("stale-idle", "stale-busy"):
        for p in (rounds / name / "checkpoints" / "state.json", rounds / name / "checkpoints", rounds / name):
            os.utime(p, (old, old))
    real, resumed = trainer.train_round, []

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        resumed.append(result.resumed_from_epoch)
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "train_round", spy)
        with Registry(settings).lock("round-stale-busy"):  # a round at work in that folder
            summary = train_step(settings, progress=False)
    return summary, resumed, _children(rounds)


def test_a_successful_round_leaves_no_scratch(world: Any) -> None:
    settings, _, first = world
    assert first["version"] == "1" and first["reused"] is False
    assert _children(settings.work_dir / "rounds") == []


def test_a_failed_round_keeps_its_folder_and_says_where(failed: Any) -> None:
    error, kept, logged = failed
    assert len(kept) == 1, kept  # round 2's key
    notes = "\n".join(getattr(error, "__notes__", []))
    assert f"rounds/{kept[0]}" in notes and "kept for diagnosis" in notes
    assert "scratch_max_age_h" in notes and "scratch_max_bytes" in notes
    assert any(f"rounds/{kept[0]}" in message for message in logged)  # at error level


def test_a_retried_round_resumes_from_its_checkpoints_then_removes_its_folder(
    failed: Any, retried: Any
) -> None:
    _, kept, _ = failed
    summary, resumed, left = retried
    assert summary["reused"] is False and summary["version"] == "2"
    assert resumed == [1]  # epoch 1's checkpoint, kept through the failure
    assert kept[0] not in left


def test_a_successful_round_prunes_stale_folders_but_not_one_whose_lock_is_held(retried: Any) -> None:
    _, _, left = retried
    # stale-idle: 100 h old, lock free -> pruned; stale-busy: as old, lock held -> kept;
    # fresh-idle: a few bytes, just written -> under both limits, kept.
    assert left == ["fresh-idle", "stale-busy"]


def test_a_conversion_leaves_no_scratch_and_a_failed_one_keeps_it(world: Any) -> None:
    import tuneloop.convert.pipeline as pipeline
    from tuneloop.steps.convert import convert_step

    settings, _, first = world
    folder = settings.work_dir / "convert" / f"v{first['version']}"
    with pytest.MonkeyPatch.context() as mp:

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("converter broke")

        mp.setattr(pipeline, "convert_model", broken)
        with pytest.raises(RuntimeError, match="converter broke") as caught:
            convert_step(settings, first["version"])
    assert (folder / "input").is_dir()  # the verified download, kept to look at
    assert str(folder) in "\n".join(caught.value.__notes__)

    summary = convert_step(settings, first["version"])
    assert summary["reused"] is False
    assert Registry(settings).get_version(first["version"]).tags["conversion"] in ("passed", "failed")
    assert _children(settings.work_dir / "convert") == []
