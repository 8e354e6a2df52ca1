"""Prefect flows run through Prefect's test harness (a temporary API and database)."""

from __future__ import annotations

import json

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_ingest_flow_cuts_a_snapshot_and_is_idempotent(prefect_harness, home, monkeypatch, tmp_path):
    from flows.ingest import ingest_flow

    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    data = tmp_path / "drop.csv"
    pd.DataFrame(
        {
            "text": [f"where is my parcel number {i}" for i in range(12)] + ["", "reset my password"],
            "label": ["track_order"] * 12 + ["track_order", "reset_password"],
        }
    ).to_csv(data, index=False)

    first = ingest_flow(paths=[str(data)])
    assert first["snapshot"] == "snap-0001"
    assert (first["rows"], first["accepted"], first["quarantined"]) == (14, 13, 1)
    assert first["reasons"] == {"empty_text": 1}
    assert first["mlflow_run_id"]

    again = ingest_flow(paths=[str(data)])
    assert again["snapshot"] is None and again["accepted"] == 0
    assert again["skipped_files"] == [str(data)]


def test_redact_check_flow_fails_on_an_old_snapshot_holding_a_card_number(prefect_harness, home, monkeypatch):
    from flows.ingest import redact_check_flow

    from tuneloop.config import load_settings
    from tuneloop.data.ingest import ingest
    from tuneloop.steps.ingest import ingest_config

    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    clean = redact_check_flow(return_state=True)
    assert clean.is_completed() and clean.result()["files"] == []
    home.mkdir(parents=True, exist_ok=True)
    data = home / "old.csv"
    rows = {
        "text": ["my card 4111 1111 1111 1111 is blocked", "where is my parcel"],
        "label": ["card", "parcel"],
    }
    pd.DataFrame(rows).to_csv(data, index=False)
    ingest([data], ingest_config(load_settings()))  # as stored before redaction existed
    data.unlink()
    state = redact_check_flow(return_state=True)
    assert state.is_failed() and "snap-0001" in str(state.message) + repr(
        state.result(raise_on_failure=False)
    )


def test_train_and_convert_flows_register_and_convert_a_version(prefect_harness, monkeypatch, tmp_path):
    import numpy as np
    from flows.convert import convert_flow
    from flows.ingest import ingest_flow
    from flows.train import train_flow

    from tuneloop.testing import make_tiny_bert

    words = {"alpha": ["apple", "banana", "cherry", "grape"], "beta": ["river", "ocean", "forest", "valley"]}
    rng = np.random.default_rng(0)
    rows = [
        {"text": " ".join(rng.choice(w, size=4)), "label": label}
        for label, w in words.items()
        for _ in range(30)
    ]
    data = tmp_path / "drop.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    for key, value in {
        "TUNELOOP_HOME": str(tmp_path / "home"),
        "TUNELOOP_BASE_MODEL": str(make_tiny_bert(tmp_path / "tiny")),
        "TUNELOOP_EPOCHS": "1",
        "TUNELOOP_LORA_MODULES_TO_SAVE": "pooler",
    }.items():
        monkeypatch.setenv(key, value)

    assert ingest_flow(paths=[str(data)])["snapshot"] == "snap-0001"
    trained = train_flow()
    assert trained["version"] == "1" and trained["data_snapshot"] == "snap-0001"
    assert set(trained["gate"]) == {"passed", "reasons"}
    converted = convert_flow(version="1")
    assert "model.int8.onnx" in converted["artifacts"]
    assert converted["tensorrt"]["skipped"].startswith("skipped:")


def test_train_flow_with_nothing_new_ends_quietly_without_a_retry(prefect_harness, monkeypatch):
    import flows.train as train_module

    from tuneloop.steps.round_data import NothingNewError

    calls = []

    def nothing_new(*_args, **_kwargs):
        calls.append(1)
        raise NothingNewError("the champion has already been trained on every snapshot up to snap-0003")

    monkeypatch.setattr(train_module, "train_step", nothing_new)
    result = train_module.train_flow()
    assert result == {"skipped": "the champion has already been trained on every snapshot up to snap-0003"}
    assert len(calls) == 1  # a retry would only wait 30 s to learn the same thing


def test_gc_flow_collects_what_its_dry_run_planned(prefect_harness, tmp_path, monkeypatch):
    from flows.gc import FLOW_USER, gc_flow
    from tests.test_gc import gc_settings, register_fake_version

    from tuneloop.registry.retention import GC_TAG
    from tuneloop.registry.store import Registry

    settings = gc_settings(tmp_path)
    monkeypatch.setenv("TUNELOOP_HOME", str(settings.home))
    monkeypatch.setenv("TUNELOOP_POLICY_PATH", str(settings.policy_path))
    registry = Registry(settings)
    for n in (1, 2, 3):
        register_fake_version(registry, tmp_path, n)
    registry.set_alias("champion", "3")

    dry = gc_flow(dry_run=True)
    assert [v["version"] for v in dry["versions"] if v["action"] == "collect"] == ["1"]
    assert GC_TAG not in registry.get_version("1").tags
    real = gc_flow()
    assert real["versions"] == dry["versions"] and real["bytes"] == dry["bytes"] > 0
    assert json.loads(registry.get_version("1").tags[GC_TAG])["by"] == FLOW_USER
    assert GC_TAG not in registry.get_version("2").tags  # the newest behind the champion stays whole


def test_compress_flow_records_a_student_on_its_version(prefect_harness, monkeypatch, tmp_path):
    from flows.compress import compress_flow
    from tests.test_compress import _policy

    from tuneloop.config import load_settings
    from tuneloop.registry.store import Registry
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.round import train_step
    from tuneloop.steps.students import read_students_tag
    from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences, make_tiny_bert

    keyword_sentences(["alpha", "beta"], 20, seed=0).to_csv(tmp_path / "drop.csv", index=False)
    monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
    for key, value in {
        "TUNELOOP_HOME": str(tmp_path / "home"),
        "TUNELOOP_BASE_MODEL": str(make_tiny_bert(tmp_path / "tiny")),  # 2 layers: one student, 1
        "TUNELOOP_POLICY_PATH": str(_policy(tmp_path, depths=[1], epochs=1)),
    }.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(epochs=1, **TINY_TRAIN_SETTINGS)
    ingest_step(settings, [tmp_path / "drop.csv"])
    version = train_step(settings, progress=False)["version"]

    result = compress_flow(version=version)
    (student,) = result["students"]
    assert student["depth"] == 1 and student["recorded"]["path"] == "students/1L"
    tag = read_students_tag(Registry(settings).get_version(version).tags)
    assert tag == {"1": student["recorded"]} and tag["1"]["passed"] == student["passed"]


def test_flows_of_project_a_work_on_as_data_only(prefect_harness, home, monkeypatch, tmp_path):
    """project="a": ingest cuts a's snapshot under a's folder; continual decides on a's rows alone."""
    from flows.continual import continual_flow
    from flows.ingest import ingest_flow

    from tuneloop.config import load_settings
    from tuneloop.projects import add_project

    monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
    monkeypatch.delenv("TUNELOOP_PROJECTS_FILE", raising=False)
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    add_project(load_settings(), "a")
    data = tmp_path / "drop.csv"
    pd.DataFrame(
        {"text": [f"where is my parcel number {i}" for i in range(12)], "label": ["track_order"] * 12}
    ).to_csv(data, index=False)

    cut = ingest_flow(paths=[str(data)], project="a")
    assert cut["snapshot"] == "snap-0001" and cut["accepted"] == 12
    a, default = load_settings(project="a"), load_settings()
    assert (a.snapshots_dir / "snap-0001").is_dir() and a.snapshots_dir.is_relative_to(
        home / "projects" / "a"
    )
    assert not default.snapshots_dir.exists()  # nothing of a's landed in the default project
    # The same drop is new to the default project: a's content hashes are a's own.
    assert ingest_flow(paths=[str(data)])["snapshot"] == "snap-0001"

    # 12 rows are under the policy's min_new_rows: no round starts, and none is pending in a's model.
    round_a = continual_flow(trigger="schedule", project="a", service_url=None)
    assert round_a["project"] == "a" and round_a["outcome"] == "not_started"
    assert round_a["decision"]["signals"]["new_rows"] == 12
    with pytest.raises(Exception, match="not declared"):
        ingest_flow(project="b")
