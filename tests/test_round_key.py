"""The round key names a round's inputs by content, and snapshot plans split new from seen data."""

from __future__ import annotations

import pytest

from tuneloop.steps.round_data import NothingNewError, plan_snapshots, round_key, snapshot_list_tag
from tuneloop.train.config import TrainConfig

CFG = TrainConfig.from_dict({"base_model": "tiny", "epochs": 1})
GATES = {"min_macro_f1": 0.7, "min_union_macro_f1": 0.7, "max_golden_regression_points": 2.0}


def key(**changes):
    args = {
        "content_hashes": ["c2", "c3"],
        "history_hashes": ["c1"],
        "parent_adapter_sha256": "a" * 64,
        "cfg": CFG,
        "gates": GATES,
    } | changes
    return round_key(**args)


def test_round_key_changes_with_every_input_the_verdict_depends_on() -> None:
    base = key()
    assert key() == base  # stable
    assert key(gates=GATES | {"min_macro_f1": 0.8}) != base  # a policy change re-judges
    assert key(parent_adapter_sha256="b" * 64) != base  # another parent (same version number)
    assert key(content_hashes=["c2", "c3x"]) != base  # a re-cut snapshot under the same id
    assert key(history_hashes=["c0"]) != base  # other replay history
    assert key(cfg=TrainConfig.from_dict({"base_model": "tiny", "epochs": 2})) != base


def test_plan_trains_every_unseen_snapshot_in_numeric_order() -> None:
    upto = ["snap-9999", "snap-10000", "snap-10001"]
    plan = plan_snapshots(upto, seen=["snap-9999"])
    assert (plan.target, plan.new, plan.seen) == ("snap-10001", ["snap-10000", "snap-10001"], ["snap-9999"])
    assert plan_snapshots(upto, seen=[]).new == upto  # no champion: everything is new
    with pytest.raises(NothingNewError, match="up to snap-10001"):
        plan_snapshots(upto, seen=[*upto, "snap-10002"])


def test_snapshot_list_tag_stays_short() -> None:
    assert snapshot_list_tag(["snap-0001", "snap-0002"]) == "snap-0001,snap-0002"
    many = [f"snap-{i:04d}" for i in range(1, 1001)]
    assert snapshot_list_tag(many) == "snap-0001..snap-1000 (1000 snapshots; all in replay_manifest.json)"
