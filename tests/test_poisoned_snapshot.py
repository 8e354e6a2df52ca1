"""A poisoned snapshot cannot hide behind a clean one, and an operator can keep it out for good.

The review's scenario on the tiny BERT: a clean drop is ingested and trained (v1, never promoted),
then a drop of the same intents with every label moved to another intent (a fifth of the rows). With
no champion the next round trains on both snapshots; pooled, the new eval rows still clear the 0.70
floor, so before this change the round passed. Judged per snapshot it is refused, naming the
poisoned snapshot. Refused, the snapshot stays unseen and every later round would train on it again:
`tuneloop exclude` keeps it out (recorded, shown in status, undoable).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import Settings
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.round import train_step
from tuneloop.testing import keyword_sentences

LABELS = ["alpha", "beta", "gamma", "delta"]
SHIFT = dict(zip(LABELS, LABELS[1:] + LABELS[:1], strict=True))  # every label moved to another


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict]:
    from tuneloop.testing import tiny_loop_settings

    root = tmp_path_factory.mktemp("poisoned")
    settings = tiny_loop_settings(root)
    clean = root / "clean.csv"
    keyword_sentences(LABELS, 150, seed=0, length=6).to_csv(clean, index=False)
    ingest_step(settings, [clean])
    first = train_step(settings, progress=False)
    poisoned = keyword_sentences(LABELS, 30, seed=1, length=6)
    poisoned["label"] = poisoned["label"].map(SHIFT)
    path = root / "poisoned.csv"
    poisoned.to_csv(path, index=False)
    ingested = ingest_step(settings, [path])
    second = train_step(settings, progress=False)
    return settings, {"first": first, "poisoned": ingested, "second": second}


def test_the_poisoned_snapshot_fails_its_own_floor_and_the_round_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    settings, runs = world
    assert runs["first"]["gate"]["passed"], runs["first"]["gate"]["reasons"]
    assert runs["poisoned"]["snapshot"] == "snap-0002"
    second = runs["second"]
    assert second["parent_version"] == "none" and second["version"] != runs["first"]["version"]
    # Pooled, the new eval rows clear the floor: this is what let the round through before.
    assert second["metrics"]["new"]["macro_f1"] > 0.70
    assert second["gate"]["passed"] is False
    reasons = second["gate"]["reasons"]
    # 12 of its rows are scored (6 eval rows a label, the larger half each), under the 20 a snapshot
    # needs to be judged alone, so it is judged with the other small ones: here, itself alone.
    named = [r for r in reasons if "(snap-0002)" in r and "below the minimum 0.700" in r]
    assert len(named) == 1 and "tuneloop exclude" in named[0], reasons
    assert not any("snap-0001" in r for r in reasons), reasons
    # The regression check's bootstrap is seeded from the round's own key (not 0 for every round).
    from tuneloop.registry.store import Registry

    info = Registry(settings).get_version(second["version"])
    key = info.tags["round_key"]
    assert info.run_id is not None  # the report as published on the round's run
    local = Registry(settings).client.download_artifacts(
        info.run_id, "report/gate.json", str(settings.home_dir / "dl")
    )
    gate = json.loads(Path(local).read_text())
    assert gate["seed"] == int(key[:8], 16)


def test_excluding_it_lets_the_loop_go_on_and_is_recorded_shown_and_undoable(world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings, runs = world
    monkeypatch.setenv("TUNELOOP_HOME", str(settings.home_dir))
    runner = CliRunner()
    # Refused again and again: the same round, the same refused version.
    assert train_step(settings, progress=False)["version"] == runs["second"]["version"]

    refused = runner.invoke(app, ["exclude", "snap-0002"])
    assert refused.exit_code != 0  # --reason is required
    result = runner.invoke(
        app, ["exclude", "snap-0002", "--reason", "labels shifted upstream", "--by", "ops", "--json"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["snapshot"] == "snap-0002" and record["excluded"] and record["by"] == "ops"
    assert record["excluded_now"] == ["snap-0002"]
    again = runner.invoke(app, ["exclude", "snap-0002", "--reason", "twice"])
    assert again.exit_code == 2 and "already excluded" in again.output

    # Without the poisoned snapshot the round is v1's round again: the clean version, which passed.
    after = train_step(settings, progress=False)
    assert after["version"] == runs["first"]["version"] and after["gate"]["passed"]

    status = json.loads(runner.invoke(app, ["status", "--json", "--no-registry"]).stdout)
    assert status["data"]["excluded"]["snap-0002"]["reason"] == "labels shifted upstream"
    text = runner.invoke(app, ["status", "--no-registry"]).output
    assert "excluded: snap-0002 by ops" in " ".join(text.split())

    undo = runner.invoke(app, ["exclude", "snap-0002", "--undo", "--reason", "wrong call", "--by", "ops"])
    assert undo.exit_code == 0, undo.output
    assert train_step(settings, progress=False)["version"] == runs["second"]["version"]
    events = json.loads((settings.ledger_dir / "exclusions.json").read_text())
    assert [(e["snapshot"], e["excluded"], e["by"]) for e in events] == [
        ("snap-0002", True, "ops"),
        ("snap-0002", False, "ops"),
    ]


def test_an_unknown_snapshot_cannot_be_excluded(world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings, _ = world
    monkeypatch.setenv("TUNELOOP_HOME", str(settings.home_dir))
    result = CliRunner().invoke(app, ["exclude", "snap-0099", "--reason", "x"])
    assert result.exit_code == 2 and "snap-0099" in result.output


def test_a_refused_policy_gate_never_silently_switches_off(tmp_path: Path) -> None:
    from tuneloop.registry.policy import PolicyError
    from tuneloop.testing import tiny_loop_settings

    settings = tiny_loop_settings(tmp_path, golden_per_label=3)  # the shipped policy needs 5
    path = tmp_path / "drop.csv"
    keyword_sentences(LABELS, 20, seed=0).to_csv(path, index=False)
    ingest_step(settings, [path])
    with pytest.raises(PolicyError, match="min_label_support"):
        train_step(settings, progress=False)
    assert not (settings.work_dir / "rounds").exists()  # refused before any training
