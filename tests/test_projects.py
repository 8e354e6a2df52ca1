"""Projects: declared in one file, each with its own data, registered model, policy and MLflow runs.

The CLI as an operator meets it (`project add`, `project list`, `--project` on the commands), the
settings each project's commands see, and the memory pool's pure decision and the follower's
eviction with fakes (the real service's pool: tests/test_projects_server.py). Two projects' rounds
trained at once, their canaries run at once through one service, and their data, aliases and
landing kept apart: tests/test_demo_story.py's two-project demo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import load_settings
from tuneloop.projects import ProjectError, UnknownProject, add_project, project_names
from tuneloop.serve.pool import ModelPool, Resident, plan_evictions

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    for variable in ("TUNELOOP_CONFIG", "TUNELOOP_PROJECT", "TUNELOOP_PROJECTS_FILE", "TUNELOOP_POLICY_PATH"):
        monkeypatch.delenv(variable, raising=False)  # and restored after: --project sets it
    return tmp_path / "home"


def test_an_operator_declares_a_project_and_every_command_can_name_it(home: Path, tmp_path: Path) -> None:
    policy = tmp_path / "cards-policy.yaml"
    policy.write_text((Path(__file__).resolve().parents[1] / "registry" / "policy.yaml").read_text())
    added = runner.invoke(
        app, ["project", "add", "cards", "--policy", str(policy), "--label-column", "category", "--json"]
    )
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["model_name"] == "tuneloop-cards"
    listed = json.loads(runner.invoke(app, ["project", "list", "--json"]).stdout)
    by_name = {p["name"]: p for p in listed["projects"]}
    assert list(by_name) == ["default", "cards"]
    assert by_name["default"]["model_name"] == "tuneloop-intent" and by_name["default"]["data"] == str(home)
    assert by_name["cards"]["policy"] == str(policy) and by_name["cards"]["label_column"] == "category"
    assert by_name["cards"]["data"] == str(home / "projects" / "cards")

    drop = tmp_path / "drop.csv"
    pd.DataFrame({"text": ["card blocked", "card stolen"], "category": ["block", "stolen"]}).to_csv(
        drop, index=False
    )
    ingested = runner.invoke(app, ["ingest", str(drop), "--project", "cards", "--json"])
    assert ingested.exit_code == 0, ingested.output
    mine = json.loads(runner.invoke(app, ["status", "--project", "cards", "--json", "--no-registry"]).stdout)
    other = json.loads(
        runner.invoke(app, ["status", "--project", "default", "--json", "--no-registry"]).stdout
    )
    assert [s["id"] for s in mine["data"]["snapshots"]] == ["snap-0001"]
    assert other["data"]["snapshots"] == []  # nothing of cards' drop reached the default project
    assert (home / "projects" / "cards" / "snapshots" / "snap-0001").is_dir()
    assert not (home / "snapshots").exists()

    for command in ("ingest", "train", "evaluate", "approve", "promote", "convert", "rollout", "rollback"):
        assert "--project" in runner.invoke(app, [command, "--help"]).output, command
    for command in ("status", "history", "retrain", "gc", "compress", "restore", "exclude"):
        assert "--project" in runner.invoke(app, [command, "--help"]).output, command
    unknown = runner.invoke(app, ["status", "--project", "nope"])
    assert unknown.exit_code == 2 and "tuneloop project add nope" in unknown.output


def test_a_project_name_or_model_cannot_be_taken_twice_or_escape_its_folder(home: Path) -> None:
    settings = load_settings()
    add_project(settings, "routing")
    with pytest.raises(ProjectError, match="declared already"):
        add_project(settings, "routing")
    with pytest.raises(ProjectError, match="belongs to project 'default'"):
        add_project(settings, "intent")  # tuneloop-intent is the default project's model
    for bad in ("Routing", "../etc", "a b", "default"):
        with pytest.raises(ProjectError):
            add_project(settings, bad)
    with pytest.raises(UnknownProject, match="tuneloop project add sentiment"):
        load_settings(project="sentiment")
    with pytest.raises(ValueError, match="lower-case"):
        load_settings(project="../x")
    routing = load_settings(project="routing")
    assert (routing.model_name, routing.experiment, routing.data_experiment) == (
        "tuneloop-routing",
        "tuneloop/routing",
        "tuneloop-data/routing",
    )
    assert routing.landing_dir == home / "projects" / "routing" / "landing"
    assert routing.work_dir == home / "projects" / "routing" / "work"
    assert routing.resolved_tracking_uri == settings.resolved_tracking_uri  # one MLflow for all
    assert project_names(routing) == ["default", "routing"]


# --- the memory pool -----------------------------------------------------------------------------
def test_eviction_takes_the_least_recently_used_and_never_a_pinned_or_the_one_asked_for() -> None:
    residents = [
        Resident("default", 30, last_used=0.0, pinned=True),
        Resident("a", 30, last_used=5.0, pinned=False),
        Resident("b", 30, last_used=9.0, pinned=False),
        Resident("c", 30, last_used=1.0, pinned=False),
    ]
    assert plan_evictions(residents, 120) == []
    assert plan_evictions(residents, 90) == ["c"]  # the oldest unpinned
    assert plan_evictions(residents, 60, spare="c") == ["a", "b"]  # c was just asked for
    assert plan_evictions(residents, 10) == ["c", "a", "b"]  # pins win over the budget
    assert plan_evictions([Resident("x", 0, 0.0, False)], 0) == []  # nothing held, nothing to drop


def test_an_evicted_follower_drops_its_models_and_loads_them_again_when_asked() -> None:
    import asyncio

    import numpy as np

    from tuneloop.serve.bundle import LoadedModel
    from tuneloop.serve.follower import Follower, RegistryState

    class Model:
        labels = ["x", "y"]

        def predict_proba(self, texts: list[str]) -> np.ndarray:
            return np.full((len(texts), 2), 0.5, dtype=np.float32)

    class Source:
        loads = 0

        def read_state(self) -> RegistryState:
            return RegistryState({"champion": "1"}, 0.0)

        def load(self, version: str) -> LoadedModel:
            Source.loads += 1
            return LoadedModel(version, "fake", Model(), nbytes=40)

    pinned = Follower(Source(), poll_s=60, retain_s=0, retry_failed_s=0)
    lazy = Follower(Source(), poll_s=60, retain_s=0, retry_failed_s=0, lazy=True)
    pinned.poll_once()
    lazy.poll_once()
    assert pinned.held_bytes() == 40 and lazy.held_bytes() == 0 and Source.loads == 1  # lazy: not yet
    pool = ModelPool({"p": pinned, "l": lazy}, budget_bytes=70, pinned=frozenset({"p"}))
    assert asyncio.run(pool.ready("l", wait_s=10))  # woken, loaded within the wait
    assert Source.loads == 2 and lazy.bundle.champion is not None
    assert pool.enforce(spare=None) == ["l"]  # 80 > 70: the unpinned one goes
    assert lazy.dormant and lazy.bundle.champion is None and lazy.evictions == 1
    assert pinned.bundle.champion is not None and not pinned.dormant
    assert asyncio.run(pool.ready("l", wait_s=10)) and Source.loads == 3


def test_a_project_with_nothing_to_load_is_not_waited_for() -> None:
    import asyncio
    import time

    from tuneloop.serve.bundle import LoadedModel
    from tuneloop.serve.follower import Follower, RegistryState

    class Untrained:  # declared, never promoted: the registry names no champion
        def read_state(self) -> RegistryState:
            return RegistryState({}, 0.0)

        def load(self, version: str) -> LoadedModel:
            raise AssertionError("nothing should be loaded")

    class Broken(Untrained):  # its champion fails to load (a checksum, say)
        def read_state(self) -> RegistryState:
            return RegistryState({"champion": "3"}, 0.0)

        def load(self, version: str) -> LoadedModel:
            raise RuntimeError("does not match its recorded checksums")

    for source in (Untrained(), Broken()):
        follower = Follower(source, poll_s=60, retain_s=0, retry_failed_s=600, lazy=True)
        follower.poll_once()
        pool = ModelPool({"x": follower}, budget_bytes=10, pinned=frozenset())
        started = time.monotonic()
        assert asyncio.run(pool.ready("x", wait_s=30))  # the scorer answers 503 and says why
        assert time.monotonic() - started < 10 and follower.bundle.champion is None
