"""`tuneloop gc`: retention as policy. The plan as a pure function, then through a real MLflow store.

Versions are registered with small fake files in the layout a round and a conversion leave
(`model/adapter/`, `model/merged/`, checksums.json, MLmodel, `report/`, `snapshot/`,
`conversions/<key>/`): gc reads only names and sizes, so bytes of model do not matter here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import pytest
import tests.test_s3_artifacts as s3_artifacts
import yaml

from tuneloop.config import PROJECT_ROOT, Settings, load_settings
from tuneloop.registry.policy import PolicyError, load_policy, parse_policy
from tuneloop.registry.policy_data import RetentionPolicy
from tuneloop.registry.retention import (
    GC_TAG,
    QuarantineCopy,
    VersionFacts,
    copies_beyond_cap,
    plan_gc,
)
from tuneloop.registry.store import Registry, RegistryError

# The S3 API on moto with an empty bucket, shared by module attribute (tests/test_s3_artifacts.py).
s3 = s3_artifacts.s3

NOW = datetime(2026, 1, 31, tzinfo=UTC)
OLD = NOW - timedelta(days=30)
RETENTION = {
    "keep_whole_behind_aliases": 1,
    "min_age_days": 7,
    "keep_tag": "keep",
    "collect": ["model/merged/**", "conversions/*/model*.onnx"],
    "quarantine_max_copies": 2,
}
BULK = {
    "model/merged/model.safetensors": 88_000_000,
    "model/merged/tokenizer.json": 700_000,
    "conversions/k1/model.onnx": 87_000_000,
    "conversions/k1/model.opt.onnx": 87_000_000,
    "conversions/k1/model.int8.onnx": 24_000_000,
}
LINEAGE = {
    "model/adapter/adapter_model.safetensors": 2_000_000,
    "model/checksums.json": 900,
    "model/MLmodel": 600,
    "report/gate.json": 3_000,
    "conversions/k1/conversion_summary.json": 2_000,
    "conversions/k1/parity.md": 1_000,
    "conversions/k1/nested/model.onnx": 5,  # deeper than conversions/*/: not a collectable graph
}


def _retention(**changes: Any) -> RetentionPolicy:
    return RetentionPolicy.model_validate({**RETENTION, **changes})


def _facts(version: int, *aliases: str, created: datetime = OLD, **tags: str) -> VersionFacts:
    return VersionFacts(str(version), f"run{version}", created, tags, aliases, {**BULK, **LINEAGE})


def _plan(*facts: VersionFacts, **changes: Any) -> dict[str, tuple[str, str]]:
    plan = plan_gc(list(facts), _retention(**changes), NOW)
    return {p.version: (p.action, p.reason) for p in plan.versions}


# --- the plan, pure --------------------------------------------------------------------------------


def test_alias_holders_are_never_collected_whatever_the_numbers() -> None:
    facts = [_facts(1, "previous"), _facts(2, "champion"), _facts(3, "canary"), _facts(4, "challenger")]
    plan = _plan(*facts, keep_whole_behind_aliases=0, min_age_days=0)
    assert plan == {
        "4": ("keep", "challenger"),
        "3": ("keep", "canary"),
        "2": ("keep", "champion"),
        "1": ("keep", "previous"),
    }


def test_the_n_newest_versions_behind_the_aliases_stay_whole() -> None:
    facts = [_facts(1), _facts(2), _facts(3, "champion"), _facts(4), _facts(5)]
    plan = _plan(*facts, keep_whole_behind_aliases=2)
    assert plan["5"] == plan["4"] == ("keep", "behind aliases (2 newest)")
    assert plan["3"] == ("keep", "champion")
    assert plan["2"][0] == plan["1"][0] == "collect"
    assert _plan(*facts, keep_whole_behind_aliases=0)["5"][0] == "collect"


def test_young_versions_and_keep_tagged_versions_stay_whole() -> None:
    young = _facts(2, created=NOW - timedelta(days=6, hours=23))
    week_old = _facts(3, created=NOW - timedelta(days=7))
    plan = _plan(_facts(1, keep="true"), young, week_old, _facts(4, keep="false"), _facts(5, "champion"))
    assert plan["1"] == ("keep", "keep tag (keep=true)")
    assert plan["2"] == ("keep", "younger than 7 days")
    assert plan["3"][0] == "collect"  # exactly 7 days old is no longer younger
    assert plan["4"] == ("keep", "behind aliases (1 newest)")  # keep=false protects nothing...
    assert _plan(_facts(4, keep="false"), _facts(5), keep_whole_behind_aliases=1)["4"][0] == "collect"


def test_only_the_collect_patterns_are_planned_with_their_bytes() -> None:
    (item,) = plan_gc([_facts(1)], _retention(keep_whole_behind_aliases=0), NOW).collect
    assert set(item.files) == set(BULK) and item.bytes == sum(BULK.values()) and item.record
    only_graphs = plan_gc(
        [_facts(1)], _retention(keep_whole_behind_aliases=0, collect=["conversions/*/*.onnx"]), NOW
    )
    assert set(only_graphs.collect[0].files) == {p for p in BULK if p.startswith("conversions/")}


def test_a_collected_version_is_finished_then_left_alone() -> None:
    record = json.dumps({"files": sorted(BULK), "bytes": 1, "at": "t", "by": "ops"})
    remainder = VersionFacts(
        "1", "run1", OLD, {GC_TAG: record}, (), {"conversions/k1/model.onnx": 9, **LINEAGE}
    )
    (item,) = plan_gc([remainder], _retention(keep_whole_behind_aliases=0), NOW).versions
    assert (item.action, item.reason, item.files, item.record) == (
        "collect",
        "finishing an interrupted gc",
        ("conversions/k1/model.onnx",),
        False,  # already listed in the record: nothing to write before deleting it
    )
    done = VersionFacts("1", "run1", OLD, {GC_TAG: record}, (), LINEAGE)
    assert _plan(done, keep_whole_behind_aliases=0) == {"1": ("keep", "already collected")}


def test_versions_sharing_a_run_are_collected_only_together() -> None:
    shared = VersionFacts("1", "run2", OLD, {}, (), BULK)
    plan = _plan(shared, _facts(2, "champion"), keep_whole_behind_aliases=0)
    assert plan["1"] == ("keep", "shares its run with v2, which is kept")


def test_collect_patterns_that_reach_lineage_are_refused_when_the_policy_loads() -> None:
    data = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    for pattern, why in [("model/**", "model/checksums.json"), ("conversions/*/*", "conversion_summary")]:
        data["retention"]["collect"] = [pattern]
        with pytest.raises(PolicyError, match=f"would collect lineage.*{why}"):
            parse_policy(data)
    data["retention"]["collect"] = ["../other/**"]
    with pytest.raises(PolicyError, match="relative to the run"):
        parse_policy(data)
    for name in ("policy.yaml", "policy.demo.yaml"):
        retention = load_policy(PROJECT_ROOT / "registry" / name).retention
        assert retention is not None and retention.roots() == ["conversions", "model/merged"]


def test_the_oldest_quarantine_copies_beyond_the_cap_go() -> None:
    copies = [
        QuarantineCopy("files/batch-20260102T000000-b/x.csv", "batch-20260102T000000-b", 5),
        QuarantineCopy("files/batch-20260101T000000-a/y.csv", "batch-20260101T000000-a", 7),
        QuarantineCopy("files/batch-20260103T000000-c/z.csv", "batch-20260103T000000-c", 9),
    ]
    assert [c.batch for c in copies_beyond_cap(copies, 1)] == [
        "batch-20260101T000000-a",
        "batch-20260102T000000-b",
    ]
    assert copies_beyond_cap(copies, 3) == [] and len(copies_beyond_cap(copies, 0)) == 3


# --- through a real MLflow store --------------------------------------------------------------------


def _write(folder: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)


def register_fake_version(registry: Registry, tmp: Path, n: int, **tags: str) -> str:
    """A version in the layout a round and a conversion leave, with small files and real lineage."""
    run_dir = tmp / f"run{n}"
    _write(
        run_dir,
        {
            "model/adapter/adapter_model.safetensors": f"adapter {n}",
            "model/adapter/labels.json": '["a", "b"]',
            "model/merged/model.safetensors": f"merged weights {n}" * 100,
            "model/merged/config.json": "{}",
            "model/checksums.json": "{}",
            "model/MLmodel": "flavors: {}",
            "report/gate.json": '{"passed": true}',
            "snapshot/manifest.json": '{"id": "snap-0001"}',
            f"conversions/key{n}/model.onnx": "onnx" * 50,
            f"conversions/key{n}/model.opt.onnx": "opt" * 50,
            f"conversions/key{n}/model.int8.onnx": "int8" * 20,
            f"conversions/key{n}/conversion_summary.json": "{}",
            f"conversions/key{n}/parity.md": "| parity |",
        },
    )
    with mlflow.start_run(experiment_id=registry.experiment_id("tuneloop-train")) as run:
        mlflow.log_artifacts(str(run_dir))
        mlflow.log_metric("macro_f1", 0.9)
        mlflow.log_param("round", n)
    ready = {"gate": "passed", "approval": "approved", "approval_by": "alice", "conversion": "passed"}
    return registry.register(
        run.info.run_id, "model", {**ready, "conversion_path": f"conversions/key{n}", **tags}
    ).version


def gc_settings(tmp_path: Path, tracking_uri: str | None = None) -> Settings:
    """Settings on a fresh home with the shipped policy, its retention keeping 1 version behind the
    aliases and no age rule (so versions made seconds ago can be collected)."""
    data = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    data["retention"] = {**RETENTION, "min_age_days": 0}
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(data))
    extra = {"tracking_uri": tracking_uri} if tracking_uri else {}
    return load_settings(home=tmp_path / "home", policy_path=policy, **extra)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Settings, Registry]:
    """7 versions: v1, v2 outside retention; v3 previous, v4 keep=true, v5 champion, v6 the newest
    behind the aliases (keep_whole_behind_aliases 1), v7 canary."""
    settings = gc_settings(tmp_path)
    registry = Registry(settings)
    for n in range(1, 8):
        register_fake_version(registry, tmp_path, n, **({"keep": "true"} if n == 4 else {}))
    for alias, version in {"previous": "3", "champion": "5", "canary": "7"}.items():
        registry.set_alias(alias, version)
    return settings, registry


def _snapshot(registry: Registry) -> dict[str, Any]:
    """Everything gc must not change: per version its aliases, tags (but gc_collected), run
    metrics and params, and every file outside the collect patterns."""
    retention = _retention()
    state = {}
    for info in registry.versions():
        assert info.run_id is not None
        run = registry.client.get_run(info.run_id)
        files = registry.run_files(info.run_id)
        state[info.version] = {
            "aliases": info.aliases,
            "tags": {k: v for k, v in info.tags.items() if k != GC_TAG},
            "metrics": run.data.metrics,
            "params": run.data.params,
            "lineage": {p: s for p, s in files.items() if not retention.collects(p)},
        }
    return state


def _bulk_left(registry: Registry, version: str) -> list[str]:
    info = registry.get_version(version)
    assert info.run_id is not None
    return sorted(p for p in registry.run_files(info.run_id) if _retention().collects(p))


def test_dry_run_plans_what_the_real_run_does_and_only_bulk_goes(world, tmp_path: Path) -> None:
    from tuneloop.steps.gc import gc_step

    settings, registry = world
    quarantine = settings.quarantine_dir / "files"
    for i, batch in enumerate(
        ["batch-20260101T000000-a", "batch-20260102T000000-b", "batch-20260103T000000-c"]
    ):
        _write(quarantine / batch, {f"bad{i}.csv": "x" * 10, f"bad{i}.csv.reason.txt": "wrong_columns\n"})
    before = _snapshot(registry)

    dry = gc_step(settings, dry_run=True, by="ops")
    assert [(v["version"], v["action"]) for v in dry["versions"] if v["action"] == "collect"] == [
        ("2", "collect"),
        ("1", "collect"),
    ]
    reasons = {v["version"]: v["reason"] for v in dry["versions"]}
    assert reasons["7"] == "canary" and reasons["5"] == "champion" and reasons["3"] == "previous"
    assert reasons["4"] == "keep tag (keep=true)" and reasons["6"] == "behind aliases (1 newest)"
    assert dry["quarantine"]["removed"] == [str(quarantine / "batch-20260101T000000-a" / "bad0.csv")]
    assert _bulk_left(registry, "1") and GC_TAG not in registry.get_version("1").tags  # nothing changed
    assert (quarantine / "batch-20260101T000000-a" / "bad0.csv").is_file()

    real = gc_step(settings, dry_run=False, by="ops")
    assert real["versions"] == dry["versions"] and real["bytes"] == dry["bytes"] > 0
    assert real["quarantine"] == dry["quarantine"]
    for version in ("1", "2"):
        assert _bulk_left(registry, version) == []
        record = json.loads(registry.get_version(version).tags[GC_TAG])
        planned = next(v for v in dry["versions"] if v["version"] == version)
        assert record["files"] == planned["files"] and record["bytes"] == planned["bytes"]
        assert record["by"] == "ops" and record["at"]
        assert "model/merged/model.safetensors" in record["files"]
    for version in ("3", "4", "5", "6", "7"):
        assert len(_bulk_left(registry, version)) == 5 and GC_TAG not in registry.get_version(version).tags
    assert _snapshot(registry) == before  # aliases, tags, metrics, params and lineage files untouched
    assert not (quarantine / "batch-20260101T000000-a" / "bad0.csv").exists()
    reason = (quarantine / "batch-20260101T000000-a" / "bad0.csv.reason.txt").read_text()
    assert reason.startswith("wrong_columns\n") and "removed by tuneloop gc" in reason
    assert (quarantine / "batch-20260103T000000-c" / "bad2.csv").is_file()

    again = gc_step(settings, dry_run=False, by="ops")
    assert {v["version"]: v["reason"] for v in again["versions"]}["1"] == "already collected"
    assert again["bytes"] == 0 and again["quarantine"]["removed"] == []


GC_KILLED_AFTER_FIRST_DELETE = textwrap.dedent(
    """
    import os, signal, sys
    from tuneloop.config import load_settings
    from tuneloop.registry.artifacts import ArtifactFiles
    from tuneloop.steps.gc import gc_step

    real = ArtifactFiles._delete_one

    def delete_then_die(self, repo, path):
        real(self, repo, path)
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 right after the first file went

    ArtifactFiles._delete_one = delete_then_die
    gc_step(load_settings(home=sys.argv[1], policy_path=sys.argv[2]), by="ops")
    """
)


def test_gc_killed_mid_delete_leaves_each_version_whole_or_recorded_and_the_next_finishes(world) -> None:
    from tuneloop.steps.gc import gc_step

    settings, registry = world
    done = subprocess.run(
        [sys.executable, "-c", GC_KILLED_AFTER_FIRST_DELETE, str(settings.home), str(settings.policy_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    states = {}
    for info in registry.versions():
        left = _bulk_left(registry, info.version)
        states[info.version] = (
            "whole" if len(left) == 5 else ("recorded" if GC_TAG in info.tags else "BROKEN")
        )
    assert "BROKEN" not in states.values(), states
    assert list(states.values()).count("recorded") >= 1 and any(
        len(_bulk_left(registry, v)) in range(1, 5) for v in states
    )

    after = gc_step(settings, dry_run=True, by="ops")
    reasons = {v["version"]: v["reason"] for v in after["versions"] if v["action"] == "collect"}
    assert "finishing an interrupted gc" in reasons.values(), reasons
    gc_step(settings, by="ops")
    for version in ("1", "2"):
        assert _bulk_left(registry, version) == [] and GC_TAG in registry.get_version(version).tags
    for version in ("3", "4", "5", "6", "7"):
        assert len(_bulk_left(registry, version)) == 5


def test_a_collected_version_is_refused_by_promotion_serving_and_downloads(world) -> None:
    from tuneloop.serve.settings import ServeSettings
    from tuneloop.steps.gc import gc_step
    from tuneloop.steps.release import promote_step
    from tuneloop.steps.serve import RegistrySource

    settings, registry = world
    gc_step(settings, by="ops")
    with pytest.raises(
        RegistryError, match=r"v1 was collected by `tuneloop gc` .* by ops.*tuneloop restore 1"
    ):
        promote_step(settings, "1", reason="roll back to the old one", by="ops")
    assert registry.aliases()["champion"] == "5"
    served = r"model/merged/: config.json, model.safetensors.*tuneloop restore 1"
    with pytest.raises(RegistryError, match=served):
        RegistrySource(settings, ServeSettings(), threads=1).load("1")
    with pytest.raises(RegistryError, match="collected by `tuneloop gc`"):
        registry.download("1", "merged", verify=False)
    adapter = registry.download("1", "adapter", verify=False)  # lineage is still there
    assert (adapter / "adapter_model.safetensors").read_text() == "adapter 1"


def test_gc_command_dry_run_and_help(world) -> None:
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    settings, registry = world
    env = {"TUNELOOP_HOME": str(settings.home), "TUNELOOP_POLICY_PATH": str(settings.policy_path)}
    runner = CliRunner()
    shown = runner.invoke(app, ["gc", "--help"], env=env)
    assert shown.exit_code == 0
    assert "Never touched" in shown.output and "champion, canary, previous or challenger" in shown.output
    dry = runner.invoke(app, ["gc", "--dry-run", "--json", "--by", "ops"], env=env)
    assert dry.exit_code == 0, dry.output
    result = json.loads(dry.output)
    assert result["dry_run"] and [v["version"] for v in result["versions"] if v["action"] == "collect"] == [
        "2",
        "1",
    ]
    assert GC_TAG not in registry.get_version("1").tags
    table = runner.invoke(app, ["gc", "--by", "ops"], env=env)
    assert table.exit_code == 0 and "collected (v2, v1)" in table.output, table.output
    assert GC_TAG in registry.get_version("1").tags


# --- through `mlflow server --serve-artifacts` into S3 (moto) ---------------------------------------


@pytest.mark.e2e
@pytest.mark.postgres
def test_gc_deletes_from_the_bucket_through_the_artifact_proxy(s3, tmp_path: Path, monkeypatch) -> None:
    from tests.mlflow_servers import mlflow_server, pg_database

    from tuneloop.steps.gc import gc_step

    BUCKET, S3_ENV = s3_artifacts.BUCKET, s3_artifacts.S3_ENV
    endpoint, bucket = s3
    for key in (*S3_ENV, "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE"):  # the client talks to the server only
        monkeypatch.delenv(key, raising=False)
    proxy = ("--serve-artifacts", "--artifacts-destination", f"s3://{BUCKET}/")
    env = {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    with pg_database("tuneloop_gc") as store, mlflow_server(store, *proxy, env=env) as url:
        settings = gc_settings(tmp_path, tracking_uri=url)
        registry = Registry(settings)
        for n in (1, 2, 3):
            register_fake_version(registry, tmp_path, n)
        registry.set_alias("champion", "3")

        def keys() -> list[str]:
            pages = bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

        before = keys()
        assert sum("/model/merged/" in k for k in before) == 6, before  # 2 files x 3 versions
        result = gc_step(settings, by="ops")
        assert [v["version"] for v in result["versions"] if v["action"] == "collect"] == ["1"]
        run1 = registry.get_version("1").run_id
        gone = sorted(set(before) - set(keys()))
        assert len(gone) == 5 and all(run1 in k for k in gone), gone
        assert all("/model/merged/" in k or k.endswith(".onnx") for k in gone), gone
        assert json.loads(registry.get_version("1").tags[GC_TAG])["by"] == "ops"
        assert any(k.endswith("model/checksums.json") and run1 in k for k in keys())


def test_status_shows_bytes_per_version_and_what_gc_would_free(world) -> None:
    """`tuneloop status` shows each version's stored bytes and gc's verdict on it, the total gc
    would free (what the dry run plans), and the home's bytes by kind."""
    from tuneloop.steps.gc import gc_step
    from tuneloop.steps.status import status

    settings, registry = world
    planned = gc_step(settings, dry_run=True, by="ops")
    reg = status(settings)["registry"]
    by_version = {v["version"]: v for v in reg["versions"]}
    for v in planned["versions"]:
        info = registry.get_version(v["version"])
        assert info.run_id is not None
        assert by_version[v["version"]]["bytes"] == sum(registry.run_files(info.run_id).values())
        if v["action"] == "collect":
            assert by_version[v["version"]]["gc"] == f"frees {v['bytes'] / 1e6:.1f} MB"
        else:
            assert by_version[v["version"]]["gc"] == v["reason"]
    assert reg["gc_would_free"] == planned["bytes"] > 0
    gc_step(settings, by="ops")
    after = {v["version"]: v for v in status(settings)["registry"]["versions"]}
    assert after["1"]["gc"] == "collected" and after["1"]["bytes"] < by_version["1"]["bytes"]
    data = status(settings, include_registry=False)["data"]
    assert set(data["bytes"]) == {"snapshots", "quarantine", "scratch", "home"}


def test_runs_marked_deleted_are_reported_with_mlflows_own_command(world) -> None:
    """A run deleted in the UI keeps its files until `mlflow gc`; gc names it and the command, and
    names apart a deleted run a version was registered from (restore it, never purge it)."""
    from tuneloop.steps.gc import gc_step

    settings, registry = world
    with mlflow.start_run(experiment_id=registry.experiment_id("tuneloop-train")) as run:
        mlflow.log_text("scratch notes", "notes.txt")
    registry.client.delete_run(run.info.run_id)
    v2 = registry.get_version("2")
    assert v2.run_id is not None
    registry.client.delete_run(v2.run_id)
    result = gc_step(settings, dry_run=True, by="ops")
    runs = {r["run_id"]: r for r in result["deleted_runs"]["runs"]}
    assert runs[run.info.run_id]["version"] is None and runs[run.info.run_id]["bytes"] == len("scratch notes")
    assert runs[v2.run_id]["version"] == "2"
    message = result["message"]
    assert f"--run-ids {run.info.run_id}`" in message
    restore = f"`mlflow runs restore --run-id {v2.run_id}`"
    assert f"the run of v2 is marked deleted (its lineage): {restore}" in message
