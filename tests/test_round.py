"""The whole train -> evaluate -> register -> approve -> promote path on a tiny random BERT.

Data is keyword sentences (one vocabulary per label), which a 2-layer, hidden-128 random encoder
learns in seconds with LoRA on every linear layer (hidden 32 stalls at 2 of 3 labels for some
seeds); the real MiniLM on BANKING77 is in test_real_model.py.
One module-scoped home carries the rounds forward: round 1 (base), round 2 (new label, continues from
the champion), a poisoned round (labels shuffled) that the gates must refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tuneloop.config import Settings
from tuneloop.registry.store import Registry, RegistryError
from tuneloop.steps.evaluate import evaluate_step
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.release import approve_step, promote_step
from tuneloop.steps.round import train_step
from tuneloop.testing import keyword_sentences

sentences = keyword_sentences


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    from tuneloop.testing import tiny_loop_settings

    root = tmp_path_factory.mktemp("round")
    # Replay as many old rows as new ones: the tiny encoder forgets faster than MiniLM.
    settings = tiny_loop_settings(root, replay_fraction=1.0)
    return settings, root


def mark_converted(settings: Settings, version: str) -> None:
    """Stand in for a passed conversion (promotion requires one; test_convert_step runs the real one)."""
    Registry(settings).set_tags(version, {"conversion": "passed"})


@pytest.fixture(scope="module")
def round1(world):
    settings, root = world
    path = root / "base.csv"
    sentences(["alpha", "beta", "gamma"], 40, seed=0).to_csv(path, index=False)
    ingest_step(settings, [path])
    return train_step(settings, progress=False)


def test_first_round_registers_a_gated_version_with_lineage(world, round1):
    settings, _ = world
    assert round1["version"] == "1" and round1["gate"] == {"passed": True, "reasons": []}
    assert round1["metrics"]["macro_f1"] >= 0.9
    info = Registry(settings).get_version("1")
    assert info.tags["data_snapshot"] == "snap-0001"
    assert info.tags["parent_version"] == "none"
    assert info.tags["approval"] == "pending"  # policy.yaml requires a person
    assert "challenger" in info.aliases

    client = MlflowClient(settings.resolved_tracking_uri)
    run = client.get_run(round1["run_id"])
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"snap-0001/train", "snap-0001/eval"}
    artifacts = {a.path for a in client.list_artifacts(round1["run_id"], "report")}
    assert {"report/confusion_new.png", "report/gate.json", "report/replay_manifest.json"} <= artifacts
    assert len(client.get_metric_history(round1["run_id"], "epoch.train_loss")) >= 1
    folder = Registry(settings).download("1")
    sums = json.loads((folder / "checksums.json").read_text())
    assert "adapter/adapter_model.safetensors" in sums and "merged/model.safetensors" in sums
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))


def test_same_round_again_reuses_the_version(world, round1):
    settings, _ = world
    again = train_step(settings, progress=False)
    assert again["version"] == round1["version"] and again["reused"] is True
    assert len(Registry(settings).versions()) == 1


def test_promotion_needs_approval_set_in_the_ui_or_cli(world, round1):
    settings, _ = world
    with pytest.raises(RegistryError, match="not approved"):
        promote_step(settings, "1", reason="first model")
    # What a person does in the MLflow UI: set the version tag approval=approved.
    MlflowClient(settings.resolved_tracking_uri).set_model_version_tag(
        settings.model_name, "1", "approval", "approved"
    )
    mark_converted(settings, "1")
    result = promote_step(settings, "1", reason="first model", by="ops")
    assert result["champion"] == "1" and result["previous"] is None
    info = Registry(settings).get_version("1")
    assert info.aliases == ["champion"] and info.tags["promoted_reason"] == "first model"


@pytest.fixture(scope="module")
def round2(world, round1):
    settings, root = world
    if Registry(settings).alias("champion") is None:  # when run alone
        approve_step(settings, "1", by="ops")
        mark_converted(settings, "1")
        promote_step(settings, "1", reason="first model", by="ops")
    path = root / "drift.csv"
    # A drift batch: a new intent plus new (longer) phrasings of the known ones.
    drift = [sentences(["delta"], 40, seed=5), sentences(["alpha", "beta", "gamma"], 10, seed=6, length=5)]
    pd.concat(drift).to_csv(path, index=False)
    ingest_step(settings, [path])
    return train_step(settings, progress=False)


def test_second_round_continues_from_champion_learns_new_label_and_replays(world, round2):
    settings, _ = world
    assert round2["parent_version"] == "1" and round2["data_snapshot"] == "snap-0002"
    assert round2["gate"]["passed"], round2["gate"]["reasons"]
    folder = Registry(settings).download(round2["version"])
    labels = json.loads((folder / "adapter" / "labels.json").read_text())
    assert labels == ["alpha", "beta", "gamma", "delta"]  # parent's order kept, new label appended
    replay = json.loads((folder / "replay_manifest.json").read_text())
    replayed = {row["snapshot"] for row in replay["rows"]}
    assert replayed == {"snap-0001"} and len(replay["rows"]) == round2_train_rows(settings)
    assert round2["metrics"]["golden"]["macro_f1"] >= 0.9  # no forgetting beyond the policy


def round2_train_rows(settings: Settings) -> int:
    from tuneloop.data import snapshot as snap

    return len(snap.load_split(settings.snapshots_dir, "snap-0002", "train"))


def test_poisoned_round_is_refused_but_recorded(world, round2):
    settings, root = world
    registry = Registry(settings)
    approve_step(settings, round2["version"], by="ops")
    mark_converted(settings, round2["version"])
    promote_step(settings, round2["version"], reason="learned delta", by="ops")
    poisoned = sentences(["alpha", "beta", "gamma", "delta"], 30, seed=9, length=5)
    poisoned["label"] = np.random.default_rng(0).permutation(poisoned["label"].to_numpy())
    path = root / "poisoned.csv"
    poisoned.to_csv(path, index=False)
    ingest_step(settings, [path])

    result = train_step(settings, progress=False)
    assert result["gate"]["passed"] is False
    assert any("macro-F1" in reason for reason in result["gate"]["reasons"])
    info = registry.get_version(result["version"])
    assert info.tags["gate"] == "failed" and "challenger" not in info.aliases
    assert registry.alias("champion").version == round2["version"]
    with pytest.raises(RegistryError, match="did not pass"):
        approve_step(settings, result["version"], by="ops")
        promote_step(settings, result["version"], reason="try anyway", by="ops")


def test_evaluate_any_version_on_any_file(world, round2, tmp_path):
    settings, _ = world
    path = tmp_path / "holdout.jsonl"
    sentences(["alpha", "delta"], 10, seed=21).to_json(path, orient="records", lines=True)
    result = evaluate_step(settings, round2["version"], path)
    assert result["rows"] == 20 and result["accuracy"] >= 0.75
    assert set(result["per_label"]) >= {"alpha", "delta"}
    assert result["per_label"]["delta"]["support"] == 10
    old = evaluate_step(settings, "1", path)
    assert old["unknown_labels"] == ["delta"] and old["per_label"]["delta"]["f1"] == 0.0
