"""Approvals seen by the loop: who is waiting, who is ready to roll out, and `tuneloop status`.

The decisions are tables over plain `VersionInfo`s; `check_approvals` and the status command run
against a real temporary MLflow store, with tags set by MlflowClient as the MLflow UI sets them.
The same approval done in a real browser is tests/test_ui_approval.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from tuneloop.config import PROJECT_ROOT, Settings, load_settings
from tuneloop.registry.policy import parse_policy
from tuneloop.registry.store import Registry, VersionInfo
from tuneloop.steps.approvals import check_approvals, ready_for_rollout, waiting_for_approval
from tuneloop.steps.release import approve_step

READY = {"gate": "passed", "approval": "approved", "approval_by": "alice", "conversion": "passed"}
POLICY = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
POLICY["approval"]["approvers"] = ["alice"]


def _info(version: str = "3", aliases: tuple[str, ...] = (), **tags: str) -> VersionInfo:
    tags = {k: v for k, v in {**READY, **tags}.items() if v}
    return VersionInfo(version, None, "runs:/r/model", list(aliases), tags, 0)


@pytest.mark.parametrize(
    ("info", "champion", "ready", "waiting"),
    [
        (_info(), None, True, False),
        (_info(), "2", True, False),
        (_info(), "3", False, False),  # it is the champion's own version or older: nothing to roll out
        (_info(), "4", False, False),
        (_info(aliases=("canary",)), "2", False, False),  # a rollout in progress is the controller's
        (_info(promoted_at="2026-01-01T00:00:00+00:00"), "2", False, False),
        (_info(rolled_back="p95 latency"), "2", False, False),
        (_info(approval="pending"), "2", False, True),
        (_info(approval_by=""), "2", False, True),  # approved in the UI without saying who
        (_info(approval_by="mallory"), "2", False, True),  # not a policy approver
        (_info(approval="rejected", approval_by="alice"), "2", False, False),
        (_info(approval="pending", gate="failed"), "2", False, False),
        (_info(approval="pending", conversion="failed"), "2", False, False),
        (_info(approval="pending", conversion=""), "2", False, True),  # approve before converting
        (_info(conversion=""), "2", False, False),  # approved, conversion still to run
    ],
)
def test_ready_and_waiting(info: VersionInfo, champion: str | None, ready: bool, waiting: bool) -> None:
    policy = parse_policy(POLICY)
    assert bool(ready_for_rollout([info], policy, champion)) == ready
    found = waiting_for_approval([info], policy, champion, "tuneloop-intent")
    assert bool(found) == waiting
    if found:
        assert found[0].command == f"tuneloop approve {info.version} --by NAME"
        assert "Model registry > tuneloop-intent > Version 3 > Tags" in found[0].ui
        assert found[0].approvers == ["alice"]


def test_ready_is_newest_first() -> None:
    versions = [_info("4"), _info("6"), _info("5", approval="pending")]
    assert [i.version for i in ready_for_rollout(versions, parse_policy(POLICY), "2")] == ["6", "4"]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Registry]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELOOP_POLICY_PATH", str(policy))
    settings = load_settings()
    return settings, Registry(settings)


def _version(registry: Registry, **tags: str) -> str:
    with mlflow.start_run(experiment_id=registry.experiment_id("t")) as run:
        pass
    return registry.register(run.info.run_id, "model", {"approval": "pending", **tags}).version


def _events(registry: Registry, version: str) -> list[dict[str, Any]]:
    tags = registry.get_version(version).tags
    return [json.loads(v) for k, v in sorted(tags.items()) if k.endswith(".approval.approved")]


def test_check_picks_up_a_ui_approval_once_and_records_it(world) -> None:
    settings, registry = world
    version = _version(registry, gate="passed", conversion="passed")
    assert check_approvals(settings) == []
    ui = registry.client  # what the MLflow UI does: set tags on the version, nothing else
    ui.set_model_version_tag(settings.model_name, version, "approval", "approved")
    assert check_approvals(settings) == []  # no approval_by, and the policy names approvers
    ui.set_model_version_tag(settings.model_name, version, "approval_by", "alice")

    assert [i.version for i in check_approvals(settings)] == [version]
    assert _events(registry, version) == [{"by": "alice", "via": "registry tags"}]
    assert "approval_at" in registry.get_version(version).tags
    assert [i.version for i in check_approvals(settings)] == [version]  # still ready, not re-recorded
    assert len(_events(registry, version)) == 1


def test_check_leaves_a_cli_approval_as_recorded(world) -> None:
    settings, registry = world
    version = _version(registry, gate="passed", conversion="passed")
    approve_step(settings, version, by="alice")
    assert [i.version for i in check_approvals(settings)] == [version]
    assert [e["by"] for e in _events(registry, version)] == ["alice"]
    assert "via" not in _events(registry, version)[0]


def test_status_shows_the_waiting_version_and_both_ways_to_approve(world) -> None:
    from tuneloop.cli import app

    settings, registry = world
    version = _version(registry, gate="passed", conversion="passed")
    _version(registry, gate="failed")
    result = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"WAITING FOR APPROVAL: v{version} (conversion: passed)" in result.output
    assert "WAITING FOR APPROVAL: v2" not in result.output  # failed its gates: nobody is asked
    assert f"Model registry > tuneloop-intent > Version {version} > Tags: edit approval" in result.output
    assert f"tuneloop approve {version} --by NAME (approvers: alice)" in result.output

    as_json = json.loads(CliRunner().invoke(app, ["status", "--json"]).output)
    waiting = as_json["registry"]["waiting_for_approval"]
    assert [w["version"] for w in waiting] == [version]

    approve_step(settings, version, by="alice")
    assert "WAITING FOR APPROVAL" not in CliRunner().invoke(app, ["status"]).output
