"""Rounds over many snapshots and many labels, on the tiny BERT (hidden 32, one epoch: learning is
not the point here, so the gates are opened wide in a policy of this test's own).

One module-scoped home: snap-0001 brings 20 labels, snap-0002 is a small drift batch, and the first
round runs with no champion (round 1 awaits a person's approval when the nightly round 2 starts, so
this is the common case). Then two more small batches are cut after the champion's data and the next
round must train on both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from tuneloop.config import PROJECT_ROOT, Settings, load_settings
from tuneloop.data import snapshot as snap
from tuneloop.registry.policy import load_policy
from tuneloop.registry.store import Registry, RegistryError
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.release import promote_step
from tuneloop.steps.round import finish_registration, train_step

LABELS = [f"intent_{i:02d}" for i in range(20)]


def batch(labels: list[str], per_label: int, tag: str) -> pd.DataFrame:
    rows = [
        {"text": f"{label} {tag} message number {j} {j * 7919 % 1000}", "label": label}
        for label in labels
        for j in range(per_label)
    ]
    return pd.DataFrame(rows)


def open_policy(path: Path) -> Path:
    """registry/policy.yaml with gates any model passes and no approval needed."""
    data = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    data["gates"] = {
        "min_macro_f1": 0.0,
        "min_union_macro_f1": 0.0,
        "max_golden_regression_points": 100.0,
        "max_per_label_drop_points": 100.0,
        "min_label_support": 1,
        "min_snapshot_eval_rows": 1,
    }
    data["approval"] = {"required": False, "auto_approve": False, "approvers": None}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    from tuneloop.testing import make_tiny_bert

    root = tmp_path_factory.mktemp("snapshots")
    settings = load_settings(
        home=root / "home",
        base_model=str(make_tiny_bert(root / "tiny")),
        epochs=1,
        batch_size=32,
        golden_per_label=3,
        lora_modules_to_save=["pooler"],
        policy_path=open_policy(root / "policy.yaml"),
    )
    return settings, root


def ingest(settings: Settings, root: Path, frame: pd.DataFrame, name: str) -> str:
    path = root / f"{name}.csv"
    frame.to_csv(path, index=False)
    return str(ingest_step(settings, [path])["snapshot"])


@pytest.fixture(scope="module")
def round1(world):
    settings, root = world
    ingest(settings, root, batch(LABELS, 12, "base"), "base")  # 3 golden, 2 eval, 7 train per label
    ingest(settings, root, batch(LABELS[:2], 3, "drift"), "drift")  # 6 rows, 2 labels
    return train_step(settings, progress=False)


def test_first_round_without_champion_trains_every_snapshot_and_knows_every_label(world, round1):
    # Before: trained on snap-0002 alone (6 rows, 2 labels) plus 2 replayed rows, and crashed on
    # the early-stopping eval rows and golden rows of the 18 labels it never saw.
    settings, _ = world
    info = Registry(settings).get_version(round1["version"])
    assert info.tags["data_snapshot"] == "snap-0002"
    assert info.tags["data_snapshots"] == "snap-0001,snap-0002"
    assert info.tags["labels"] == "20" and info.tags["replay_rows"] == "0"
    params = MlflowClient(settings.resolved_tracking_uri).get_run(round1["run_id"]).data.params
    assert int(params["train_rows"]) == sum(train_rows(settings, s) for s in ("snap-0001", "snap-0002"))


def train_rows(settings: Settings, sid: str) -> int:
    return len(snap.load_split(settings.snapshots_dir, sid, "train"))


@pytest.fixture(scope="module")
def round2(world, round1):
    settings, root = world
    # Promotion needs a passed conversion; test_convert_step runs the real one.
    Registry(settings).set_tags(round1["version"], {"conversion": "passed"})
    promote_step(settings, round1["version"], reason="first model", by="test")
    ingest(settings, root, batch(LABELS[2:4], 3, "later"), "later")
    ingest(settings, root, batch(LABELS[4:5], 4, "latest"), "latest")
    return train_step(settings, progress=False)


def test_every_snapshot_cut_after_the_champion_is_trained_and_every_label_replayed(world, round2):
    settings, _ = world
    assert round2["parent_version"] == "1" and round2["data_snapshot"] == "snap-0004"
    info = Registry(settings).get_version(round2["version"])
    assert info.tags["data_snapshots"] == "snap-0003,snap-0004"
    new_rows = train_rows(settings, "snap-0003") + train_rows(settings, "snap-0004")
    folder = Registry(settings).download(round2["version"])
    manifest = json.loads((folder / "replay_manifest.json").read_text())
    assert manifest["trained_snapshots"] == ["snap-0003", "snap-0004"]
    assert manifest["history_snapshots"] == ["snap-0001", "snap-0002"]
    # 0.3 x ~10 new rows would replay 3 rows; replay_per_label (15) asks for more rows of each of
    # the 20 known labels than the history holds (7-8 train rows each), so all of it is replayed.
    history = train_rows(settings, "snap-0001") + train_rows(settings, "snap-0002")
    assert settings.replay_per_label * len(LABELS) > history
    assert set(manifest["per_label"]) == set(LABELS) and manifest["count"] == history
    assert {row["snapshot"] for row in manifest["rows"]} == {"snap-0001", "snap-0002"}
    params = MlflowClient(settings.resolved_tracking_uri).get_run(round2["run_id"]).data.params
    assert int(params["train_rows"]) == new_rows + history
    assert params["data_snapshots"] == "snap-0003,snap-0004"


def test_early_stopping_sees_every_eval_row_of_every_old_label(world, round2):
    # Before: as many old eval rows as new ones (at least one per label), so with 20 old labels and
    # a few new rows each old label had one row, and one row moved macro-F1 by up to 1/20.
    from tuneloop.steps.round import train_config
    from tuneloop.steps.round_data import load_round_data, plan_round

    settings, _ = world
    data = load_round_data(
        settings, plan_round(settings.snapshots_dir, "snap-0004", "snap-0002"), train_config(settings)
    )
    old_eval = pd.concat(
        [snap.load_split(settings.snapshots_dir, s, "eval") for s in ("snap-0001", "snap-0002")]
    )
    new_eval = pd.concat(
        [snap.load_split(settings.snapshots_dir, s, "eval") for s in ("snap-0003", "snap-0004")]
    )
    assert len(old_eval) >= 2 * len(LABELS) > len(new_eval)  # 2 eval rows per base label
    stop, gated = set(data.stop_eval["text"]), set(data.new_eval["text"])
    assert set(old_eval["text"]) <= stop  # every old label's every eval row
    # The new eval rows are split, never shared: early stopping selects on one half, the gates (the
    # `new` and `union` floors, `metric.new.*`) score the other, the larger half of each label.
    assert not stop & gated
    assert stop | gated == set(old_eval["text"]) | set(new_eval["text"])
    for label, rows in new_eval.groupby("label"):
        assert (data.new_eval["label"] == label).sum() == (len(rows) + 1) // 2


def test_an_epochs_override_caps_first_and_continued_rounds_alike(world):
    from tuneloop.steps.round import train_config

    settings, _ = world
    assert train_config(settings).continued_epochs == settings.continued_epochs == 6
    assert train_config(settings, epochs=10).continued_epochs == 10  # `tuneloop train --epochs 10`
    assert train_config(settings, epochs=10, continued_epochs=3).continued_epochs == 3


def test_challenger_never_moves_back_nor_to_a_rejected_version(world, round2):
    settings, _ = world
    registry = Registry(settings)
    policy = load_policy(settings.policy_path)
    assert registry.alias("challenger").version == round2["version"]
    # A re-run of round 1 ends in finish_registration on v1: the alias must stay on the newer v2.
    finish_registration(registry, registry.get_version(round1_version := "1"), policy)
    assert registry.alias("challenger").version == round2["version"] != round1_version
    registry.clear_alias("challenger")
    registry.set_tags(round2["version"], {"approval": "rejected"})
    finish_registration(registry, registry.get_version(round2["version"]), policy)
    assert registry.alias("challenger") is None


def test_nothing_new_to_train_is_a_clear_error(world, round2):
    settings, _ = world
    with pytest.raises(ValueError, match="already been trained on every snapshot up to snap-0001"):
        train_step(settings, snapshot_id="snap-0001", progress=False)


def test_golden_per_label_zero_is_refused_before_any_work(world):
    settings, _ = world
    before = len(Registry(settings).versions())
    with pytest.raises(ValueError, match="golden_per_label is 0"):
        train_step(settings.model_copy(update={"golden_per_label": 0}), progress=False)
    assert len(Registry(settings).versions()) == before


def test_a_tampered_parent_adapter_stops_the_round(world, round2):
    settings, root = world
    registry = Registry(settings)
    champion = registry.alias("champion")
    client = MlflowClient(settings.resolved_tracking_uri)
    local = Path(client.get_run(champion.run_id).info.artifact_uri.removeprefix("file://"))
    weights = local / "model" / "adapter" / "adapter_model.safetensors"
    original = weights.read_bytes()
    ingest(settings, root, batch(LABELS[5:6], 4, "tamper"), "tamper")
    before = len(registry.versions())
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(RegistryError, match="does not match its recorded checksums"):
            train_step(settings, progress=False)
    finally:
        weights.write_bytes(original)
    assert len(registry.versions()) == before
