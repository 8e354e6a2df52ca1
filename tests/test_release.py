"""Promotion and approval: the rule as a table, then through a real MLflow store.

Versions are registered with the tags a round and a conversion leave (no model artifacts: the
promotion never reads them); tags are set with MlflowClient exactly as a person does in the UI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from tuneloop.config import PROJECT_ROOT, Settings, load_settings
from tuneloop.registry.policy import parse_policy
from tuneloop.registry.store import Registry, RegistryError, VersionInfo
from tuneloop.steps.release import PENDING_TAG, approve_step, promote_step, promotion_problems

READY = {"gate": "passed", "approval": "approved", "approval_by": "alice", "conversion": "passed"}


def _policy_data(**approval: Any) -> dict[str, Any]:
    data = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    data["approval"].update(approval)
    return data


def _info(**tags: str) -> VersionInfo:
    return VersionInfo("3", None, "runs:/r/model", [], {k: v for k, v in tags.items() if v}, 0)


@pytest.mark.parametrize(
    ("tags", "approval", "expected"),
    [
        ({}, {}, []),
        ({}, {"approvers": ["alice"]}, []),
        ({"approval_by": ""}, {}, []),  # anyone may approve: who did is not checked
        ({"approval_by": ""}, {"approvers": ["alice"]}, ["no approval_by", "approval_by=<approver>"]),
        ({"approval_by": "mallory"}, {"approvers": ["alice"]}, ["approved by 'mallory', who is not"]),
        ({"approval_by": "policy:auto_approve"}, {"approvers": ["alice"]}, ["who is not"]),
        ({"approval_by": "policy:auto_approve"}, {"approvers": ["alice"], "auto_approve": True}, []),
        ({"approval": "pending"}, {}, ["not approved (approval=pending)"]),
        ({"approval": "pending"}, {"required": False}, []),
        ({"approval": "rejected", "approval_by": "bob"}, {"required": False}, ["rejected by bob"]),
        ({"gate": "failed"}, {}, ["did not pass the evaluation gates"]),
        ({"conversion": ""}, {}, ["has not passed conversion (conversion=not run)", "tuneloop convert 3"]),
        ({"conversion": "running"}, {}, ["has not passed conversion (conversion=running)"]),
        ({"conversion": "failed"}, {}, ["failed its conversion parity gate"]),
    ],
)
def test_promotion_problems(tags: dict[str, str], approval: dict[str, Any], expected: list[str]) -> None:
    problems = promotion_problems(_info(**{**READY, **tags}), parse_policy(_policy_data(**approval)))
    text = "; ".join(problems)
    assert all(part in text for part in expected), text
    assert bool(problems) == bool(expected)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Settings, Registry]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(_policy_data(approvers=["alice"])))
    settings = load_settings(home=tmp_path / "home", policy_path=policy)
    return settings, Registry(settings)


def _version(registry: Registry, **tags: str) -> str:
    with mlflow.start_run(experiment_id=registry.experiment_id("t")) as run:
        pass
    return registry.register(run.info.run_id, "model", {"approval": "pending", **tags}).version


def test_a_ui_approval_must_name_an_approver_and_the_version_must_be_converted(world) -> None:
    settings, registry = world
    version = _version(registry, gate="passed")
    ui = registry.client  # what the MLflow UI does: set tags on the version
    ui.set_model_version_tag(settings.model_name, version, "approval", "approved")
    with pytest.raises(RegistryError, match="no approval_by, but the policy names approvers"):
        promote_step(settings, version, reason="ui approval")
    ui.set_model_version_tag(settings.model_name, version, "approval_by", "mallory")
    with pytest.raises(RegistryError, match="'mallory', who is not among"):
        promote_step(settings, version, reason="ui approval")
    ui.set_model_version_tag(settings.model_name, version, "approval_by", "alice")
    with pytest.raises(RegistryError, match="has not passed conversion"):
        promote_step(settings, version, reason="ui approval")
    ui.set_model_version_tag(settings.model_name, version, "conversion", "passed")
    assert promote_step(settings, version, reason="ui approval", by="alice")["champion"] == version
    assert registry.aliases() == {"champion": version}


class KilledAfterAliasMove(Registry):
    """The real registry, except that the process 'dies' at the first `promoted_*` tag write."""

    def set_tags(self, version: str, tags: dict[str, Any]) -> None:
        if "promoted_by" in tags:
            raise KeyboardInterrupt("killed")
        super().set_tags(version, tags)


def test_a_promotion_killed_after_the_alias_move_completes_on_rerun(world) -> None:
    settings, registry = world
    old = _version(registry, **READY)
    promote_step(settings, old, reason="first", by="alice")
    new = _version(registry, **READY)
    registry.set_alias("challenger", new)
    with pytest.raises(KeyboardInterrupt):
        promote_step(settings, new, reason="better", by="alice", registry=KilledAfterAliasMove(settings))
    cut = registry.get_version(new)
    assert registry.aliases() == {"champion": new, "previous": old}
    assert "promoted_by" not in cut.tags and json.loads(cut.tags[PENDING_TAG])["from"] == old

    result = promote_step(settings, new, reason="ignored: the recorded intent wins", by="bob")
    assert result["resumed"] and result["previous"] == old and result["reason"] == "better"
    done = registry.get_version(new)
    assert PENDING_TAG not in done.tags
    assert done.tags["promoted_by"] == "alice" and done.tags["promoted_reason"] == "better"
    events = [json.loads(v) for k, v in done.tags.items() if k.endswith(".promoted")]
    assert [(e["by"], e["previous"]) for e in events] == [("alice", old)]
    assert registry.aliases() == {"champion": new, "previous": old}
    again = promote_step(settings, new, reason="again", by="alice")
    assert not again["changed"] and not again["resumed"]
    assert len([k for k in registry.get_version(new).tags if k.endswith(".promoted")]) == 1


def test_rejecting_an_older_version_leaves_a_newer_challenger(world) -> None:
    settings, registry = world
    older = _version(registry, gate="passed")
    newer = _version(registry, gate="passed")
    registry.set_alias("challenger", newer)
    approve_step(settings, older, by="alice", reject=True)
    assert registry.aliases() == {"challenger": newer}
    approve_step(settings, newer, by="alice", reject=True)
    assert registry.aliases() == {}
    assert registry.get_version(newer).tags["approval_by"] == "alice"


class RoundFinishesMeanwhile(Registry):
    """A newer round takes `challenger` right after the rejected version is read (no lock held)."""

    newer = ""

    def get_version(self, version: str | int) -> VersionInfo:
        info = super().get_version(version)
        if self.newer and self.newer != str(version):
            newer, self.newer = self.newer, ""
            self.set_alias("challenger", newer)
        return info


def test_a_rejection_racing_a_new_round_leaves_the_new_challenger(world) -> None:
    settings, registry = world
    older = _version(registry, gate="passed")
    registry.set_alias("challenger", older)
    newer = _version(registry, gate="passed")
    racing = RoundFinishesMeanwhile(settings)
    racing.newer = newer
    approve_step(settings, older, by="alice", reject=True, registry=racing)
    assert registry.aliases() == {"challenger": newer}


def _rollout_in_flight(registry: Registry, canary: str, champion: str) -> None:
    """A canary rollout as the controller records it (tuneloop.steps.rollout._start), at step 1 of 4."""
    from tuneloop.steps.rollout_state import set_weight, write_state

    registry.set_alias("canary", canary)
    write_state(registry, run_id="", champion=champion, by="ctl", step=0, started_at=0, quality=frozenset())
    write_state(registry, version=canary)
    set_weight(registry, 0.05)


def _events(registry: Registry, version: str) -> list[str]:
    return [
        k.split(".", 2)[2]
        for k in sorted(k for k in registry.get_version(version).tags if k.startswith("event."))
    ]


def test_promote_is_refused_while_a_rollout_is_in_flight_unless_forced_with_a_reason(world) -> None:
    from tuneloop.steps.rollout_state import read_model

    settings, registry = world
    old, canary, hotfix = (_version(registry, **READY) for _ in range(3))
    promote_step(settings, old, reason="first", by="alice")
    _rollout_in_flight(registry, canary, old)
    for version in (hotfix, canary):  # another version, or the canary itself: both bypass its checks
        with pytest.raises(RegistryError, match=f"rollout of v{canary} is in flight.*--force"):
            promote_step(settings, version, reason="hotfix", by="alice")
    assert registry.aliases() == {"champion": old, "canary": canary}

    result = promote_step(settings, hotfix, reason="hotfix: tokenizer CVE", by="alice", force=True)
    assert result["champion"] == hotfix and result["changed"]
    view = read_model(registry)
    assert view.aliases == {"champion": hotfix, "previous": old} and view.state is None and view.weight == 0
    withdrawn = registry.get_version(canary).tags["rolled_back"]
    assert f"forced promotion of v{hotfix}" in withdrawn and "tokenizer CVE" in withdrawn
    assert _events(registry, canary).index("canary.weight") < _events(registry, canary).index("rolled_back")


def test_a_forced_promotion_of_the_canary_ends_its_rollout_weight_first(world) -> None:
    from tuneloop.steps.rollout_state import read_model

    settings, registry = world
    old, canary = (_version(registry, **READY) for _ in range(2))
    promote_step(settings, old, reason="first", by="alice")
    _rollout_in_flight(registry, canary, old)
    promote_step(settings, canary, reason="break-glass: the old one is down", by="alice", force=True)
    view = read_model(registry)
    assert view.aliases == {"champion": canary, "previous": old} and view.state is None and view.weight == 0
    moves = _events(registry, canary)
    assert moves.index("canary.weight") < moves.index("promoted")  # weight 0 before the alias moved
