"""Replay selection: seeded, balanced across labels, sized right, reproducible from its manifest."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from tuneloop.train.replay import apply_replay_manifest, replay_budget, replay_manifest, select_replay


def make_history(counts: dict[str, int]) -> pd.DataFrame:
    rows = [
        {
            "text": f"{label} text {i}",
            "label": label,
            "key": f"k-{label}-{i:03d}",
            "snapshot": f"snap-{i % 3}",
        }
        for label, n in counts.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows)


HISTORY = make_history({"a": 40, "b": 40, "c": 3, "d": 25})  # 108 rows, "c" is scarce


def test_budget_rounds_half_up() -> None:
    assert replay_budget(100, 0.3) == 30
    assert replay_budget(5, 0.5) == 3  # 2.5 rounds up; Python's round() would give 2
    assert replay_budget(0, 0.3) == 0


def test_size_is_fraction_of_new_rows_and_capped() -> None:
    assert len(select_replay(HISTORY, n_new_rows=100, fraction=0.3, seed=1)) == 30
    assert len(select_replay(HISTORY, n_new_rows=1000, fraction=0.5, seed=1)) == len(HISTORY)
    assert select_replay(HISTORY, n_new_rows=100, fraction=0.0, seed=1).empty


def test_balanced_with_scarce_label_and_every_label_present() -> None:
    counts = select_replay(HISTORY, n_new_rows=100, fraction=0.3, seed=1)["label"].value_counts()
    # 30 rows over 4 labels: "c" has only 3, so the other 27 split 9/9/9.
    assert counts.to_dict() == {"a": 9, "b": 9, "c": 3, "d": 9}
    small = select_replay(HISTORY, n_new_rows=20, fraction=0.3, seed=1)["label"].value_counts()
    assert sorted(small.index) == ["a", "b", "c", "d"]  # 6 rows: every label still represented
    assert small.max() - small.min() <= 1


def test_every_known_label_is_replayed_even_for_a_small_drift_batch() -> None:
    # 77 labels of history, a drift batch of 10 new rows: 0.3 x 10 = 3 rows would rehearse 3 labels.
    many = make_history({f"intent_{i:02d}": 6 for i in range(77)})
    picked = select_replay(many, n_new_rows=10, fraction=0.3, seed=1)
    assert len(picked) == 77 and picked["label"].nunique() == 77
    # Above the number of labels the fraction rules as before; 0 still means no replay.
    assert len(select_replay(many, n_new_rows=400, fraction=0.3, seed=1)) == 120
    assert select_replay(many, n_new_rows=10, fraction=0.0, seed=1).empty
    assert len(select_replay(many, n_new_rows=10, fraction=0.3, seed=1, cover_labels=False)) == 3


def test_per_label_replay_keeps_each_old_label_s_share_as_labels_pile_up() -> None:
    # Issue 14: 0.3 x 280 new rows = 84 rows is 2.8 a label over 30 old labels but 1.2 over 70.
    for n_labels in (30, 70):
        history = make_history({f"intent_{i:02d}": 28 for i in range(n_labels)})
        by_fraction = select_replay(history, n_new_rows=280, fraction=0.3, seed=1)
        by_label = select_replay(history, n_new_rows=280, fraction=0.3, seed=1, per_label=10)
        assert len(by_fraction) == max(84, n_labels)
        assert len(by_label) == 10 * n_labels
        assert set(by_label["label"].value_counts()) == {10}
    # The larger budget wins; a scarce label gives what it has; 0 and 0 is no replay at all.
    assert len(select_replay(HISTORY, n_new_rows=100, fraction=0.3, seed=1, per_label=2)) == 30
    counts = select_replay(HISTORY, n_new_rows=10, fraction=0.3, seed=1, per_label=10)["label"].value_counts()
    # 10 x 4 labels = 40 rows: "c" has 3, so the other 37 split 12/12/13 (the odd row goes at random).
    assert counts.sum() == 40 and counts["c"] == 3
    assert sorted(counts[["a", "b", "d"]]) == [12, 12, 13]
    assert select_replay(HISTORY, n_new_rows=10, fraction=0.0, seed=1, per_label=0).empty
    with pytest.raises(ValueError, match="per_label"):
        select_replay(HISTORY, 10, 0.3, seed=1, per_label=-1)


def test_seeded_and_independent_of_row_order() -> None:
    first = select_replay(HISTORY, 100, 0.3, seed=7)
    shuffled = HISTORY.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(first, select_replay(shuffled, 100, 0.3, seed=7))
    other = select_replay(HISTORY, 100, 0.3, seed=8)
    assert set(first["key"]) != set(other["key"])


def test_manifest_reproduces_selection() -> None:
    selected = select_replay(HISTORY, 100, 0.3, seed=5)
    manifest = replay_manifest(selected)
    assert manifest["count"] == 30 and len(manifest["sha256"]) == 64
    assert {(r["snapshot"], r["key"]) for r in manifest["rows"]} == set(
        zip(selected["snapshot"], selected["key"], strict=True)
    )
    rebuilt = apply_replay_manifest(HISTORY.sample(frac=1.0, random_state=9), manifest)
    pd.testing.assert_frame_equal(rebuilt, selected)


def test_manifest_refuses_tampering_and_missing_rows() -> None:
    manifest = replay_manifest(select_replay(HISTORY, 100, 0.3, seed=5))
    tampered = manifest | {"rows": manifest["rows"][1:]}
    with pytest.raises(ValueError, match="sha256"):
        apply_replay_manifest(HISTORY, tampered)
    dropped = HISTORY[HISTORY["key"] != manifest["rows"][0]["key"]]
    with pytest.raises(KeyError, match="not in the history"):
        apply_replay_manifest(dropped, manifest)


def test_missing_columns_named() -> None:
    with pytest.raises(ValueError, match="snapshot"):
        select_replay(HISTORY.drop(columns="snapshot"), 10, 0.3, seed=1)


def test_light_modules_do_not_import_torch() -> None:
    code = (
        "import sys, tuneloop.train, tuneloop.train.config, tuneloop.train.replay; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
