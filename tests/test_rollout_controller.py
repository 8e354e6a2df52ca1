"""The rollout controller on a real MLflow store (tmp_path) with scripted serving counters.

Versions carry the tags a round, an approval and a conversion leave (the controller reads nothing
else); the metrics source is plain data: the counters each look sees. tests/test_rollout_server.py
runs the same controller against a real `bentoml serve`; here every step is seconds or less.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import yaml

from tuneloop.config import PROJECT_ROOT, Settings, load_settings
from tuneloop.registry.store import Registry, RegistryError
from tuneloop.rollout.counters import VersionCounters
from tuneloop.steps.release import PENDING_TAG, promote_step
from tuneloop.steps.rollout import rollout_step
from tuneloop.steps.rollout_state import ROLLBACK_TAG, read_state, rollback_step, write_state

READY = {"gate": "passed", "approval": "approved", "approval_by": "alice", "conversion": "passed"}
CANARY = {
    "steps": [50, 100],
    "min_requests_per_step": 10,
    "min_feedback_per_step": 5,
    "min_shadowed_per_step": 5,
    "max_error_rate": 0.05,
    "max_p95_latency_ms": 150,
    "max_macro_f1_drop_points": 10.0,
    "max_prediction_drift": 0.5,
    "max_shadow_disagreement": 0.5,
    "step_interval_seconds": 0.0,
    "step_deadline_seconds": 0.3,
}
TICK_S = 0.01
MAX_TICKS = 300  # 3 s of ticks: far past the 0.3 s deadline; a controller still going holds forever


class HeldForever(AssertionError):
    """The controller was still ticking long after every deadline."""


def ticking(hook: Callable[[int], None] = lambda _: None) -> Callable[[float], None]:
    """A sleep for the controller: really sleeps, runs `hook(tick)`, refuses to go on forever."""
    import time

    count = [0]

    def sleep(seconds: float) -> None:
        count[0] += 1
        if count[0] > MAX_TICKS:
            raise HeldForever(f"still holding after {MAX_TICKS} ticks")
        time.sleep(seconds)
        hook(count[0])

    return sleep


def healthy(items: float = 40, shadow: bool = True, latency: bool = True) -> VersionCounters:
    per_item = {"0.002": items, "inf": items} if latency else {}
    return VersionCounters(
        items=items,
        calls=items / 4,
        item_latency_buckets=per_item,
        predicted={"a": items / 2, "b": items / 2},
        shadow_agreed=items / 2 if shadow else 0.0,
    )


class Scripted:
    """A metrics source whose every window reads `counters(version)` for each version."""

    def __init__(
        self, counters: Callable[[], dict[str, VersionCounters]], on_read: Callable[[], None] = lambda: None
    ):
        self.counters, self.on_read = counters, on_read

    def read(self) -> dict[str, VersionCounters]:
        self.on_read()
        return self.counters()

    def window(self) -> Scripted:
        return self

    def describe(self) -> str:
        return "scripted"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the module (creating one takes seconds); each test has its own model."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture
def world(
    store: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Settings, Registry, dict[str, str]]:
    """Champion v1 and approved, converted v2..v4 of a fresh model, under the tiny canary policy."""
    data = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    data["canary"] = CANARY
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(data))
    name = "m-" + "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:80]
    settings = load_settings(home=store, policy_path=tmp_path / "policy.yaml", model_name=name)
    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.experiment_id("t")) as run:
        pass
    v = {str(i): registry.register(run.info.run_id, "model", dict(READY)).version for i in range(1, 5)}
    promote_step(settings, v["1"], reason="first", by="alice", registry=registry)
    return settings, registry, v


def both(canary: str, c: VersionCounters) -> Callable[[], dict[str, VersionCounters]]:
    return lambda: {canary: c, "1": healthy(400)}


def events(registry: Registry, version: str) -> list[str]:
    """The version's audit events, oldest first."""
    tags = registry.get_version(version).tags
    return [k.split(".", 2)[2] for k in sorted(k for k in tags if k.startswith("event."))]


def model(registry: Registry) -> tuple[dict[str, str], dict[str, str]]:
    m = registry.client.get_registered_model(registry.model_name)
    return {str(a): str(b) for a, b in (m.aliases or {}).items()}, dict(m.tags or {})


def settled(registry: Registry, champion: str) -> None:
    aliases, tags = model(registry)
    assert aliases.get("champion") == champion and "canary" not in aliases, aliases
    assert tags.get("canary_weight") == "0" and read_state(registry) is None and ROLLBACK_TAG not in tags


def test_healthy_canary_is_promoted(world) -> None:
    settings, registry, v = world
    result = rollout_step(settings, v["2"], Scripted(both(v["2"], healthy())), tick_s=TICK_S, sleep=ticking())
    assert result["outcome"] == "promoted", result
    settled(registry, v["2"])
    moves = events(registry, v["2"])
    # weight 0 before the alias moved: the audit trail records the order
    assert moves.index("canary.weight") < moves.index("promoted"), moves


@pytest.mark.parametrize(
    ("counters", "why"),
    [
        (healthy(items=3), "3 of the 10 items"),  # a quiet night, or a canary no replica loaded
        (healthy(latency=False), "latency unknown"),  # a missing series holds, never passes
        (healthy(shadow=False), "no quality signal"),  # error rate and latency alone never promote
    ],
    ids=["too little traffic", "missing latency series", "no quality signal"],
)
def test_a_step_that_cannot_be_judged_ends_the_rollout_at_its_deadline(world, counters, why) -> None:
    settings, registry, v = world
    result = rollout_step(settings, v["2"], Scripted(both(v["2"], counters)), tick_s=TICK_S, sleep=ticking())
    assert result["outcome"] == "rolled_back", result
    assert "deadline" in result["reason"] and why in result["reason"], result["reason"]
    settled(registry, v["1"])
    assert registry.get_version(v["2"]).tags["rolled_back"] == result["reason"]


def test_metrics_unreadable_until_the_deadline_end_the_rollout(world) -> None:
    from tuneloop.rollout.sources import MetricsError

    settings, registry, v = world

    def broken() -> dict[str, VersionCounters]:
        raise MetricsError("reading http://pod-a:3000/metrics failed")

    result = rollout_step(settings, v["2"], Scripted(broken), tick_s=TICK_S, sleep=ticking())
    assert result["outcome"] == "rolled_back" and "metrics unreadable" in result["reason"], result
    settled(registry, v["1"])


def test_a_rollout_whose_canary_alias_is_gone_ends(world) -> None:
    """A rollback cut short after clearing the alias: the controller used to hold forever."""
    settings, registry, v = world

    def clear_alias(tick: int) -> None:
        if tick == 2:
            registry.clear_alias("canary")  # weight still set, rollout still recorded

    result = rollout_step(
        settings, v["2"], Scripted(both(v["2"], healthy(items=3))), tick_s=TICK_S, sleep=ticking(clear_alias)
    )
    assert result["outcome"] == "rolled_back" and "canary alias" in result["reason"], result
    settled(registry, v["1"])
    # and a recorded rollout found without its alias on resume ends the same way, at once
    write_state(registry, run_id="", champion=v["1"], by="t", step=1, started_at=0, quality=frozenset())
    write_state(registry, version=v["3"])
    result = rollout_step(settings, v["3"], Scripted(both(v["3"], healthy())), tick_s=TICK_S, sleep=ticking())
    assert result["outcome"] == "rolled_back" and "canary alias" in result["reason"], result
    settled(registry, v["1"])


class KilledAt(Registry):
    """A registry whose process 'dies' (raises) at one alias move, as kill -9 would leave it."""

    def __init__(self, settings: Settings, method: str, alias: str) -> None:
        super().__init__(settings)
        self.method, self.target = method, alias

    def set_alias(self, alias: str, version: str) -> None:
        if self.method == "set_alias" and alias == self.target:
            raise KeyboardInterrupt("killed")
        super().set_alias(alias, version)

    def clear_alias(self, alias: str) -> None:
        if self.method == "clear_alias" and alias == self.target:
            raise KeyboardInterrupt("killed")
        super().clear_alias(alias)


def test_a_controller_killed_inside_the_rollback_is_finished_from_its_recorded_intent(world) -> None:
    settings, registry, v = world
    failing = VersionCounters(items=40, errors=10, calls=30, item_latency_buckets={"inf": 40})
    killed = KilledAt(settings, "clear_alias", "canary")
    with pytest.raises(KeyboardInterrupt):
        rollout_step(
            settings, v["2"], Scripted(both(v["2"], failing)), tick_s=TICK_S, sleep=ticking(), registry=killed
        )
    aliases, tags = model(registry)
    assert tags["canary_weight"] == "0" and aliases["canary"] == v["2"]  # weight 0 first, alias still there
    intent = json.loads(tags[ROLLBACK_TAG])
    assert intent["version"] == v["2"] and "error rate" in intent["reason"]
    # the next controller (here the same version's) finishes the withdrawal, never resumes the canary
    result = rollout_step(settings, v["2"], Scripted(both(v["2"], healthy())), tick_s=TICK_S, sleep=ticking())
    assert result["outcome"] == "rolled_back" and result["reason"] == intent["reason"], result
    settled(registry, v["1"])
    assert registry.get_version(v["2"]).tags["rolled_back"] == intent["reason"]
    moves = events(registry, v["2"])
    assert moves.index("canary.weight") < moves.index("rolled_back") and moves.count("rolled_back") == 1


def test_a_controller_killed_inside_the_promotion_is_finished_on_resume(world) -> None:
    settings, registry, v = world
    killed = KilledAt(settings, "set_alias", "champion")
    source = Scripted(both(v["2"], healthy()))
    with pytest.raises(KeyboardInterrupt):
        rollout_step(settings, v["2"], source, tick_s=TICK_S, sleep=ticking(), registry=killed)
    aliases, tags = model(registry)
    assert tags["canary_weight"] == "0" and aliases["champion"] == v["1"]  # weight 0 before the alias moved
    assert PENDING_TAG in registry.get_version(v["2"]).tags and read_state(registry).version == v["2"]
    result = rollout_step(settings, v["2"], source, tick_s=TICK_S, sleep=ticking())
    assert result["outcome"] == "promoted" and result["previous"] == v["1"], result
    settled(registry, v["2"])
    moves = events(registry, v["2"])
    assert moves.index("canary.weight") < moves.index("promoted") and moves.count("promoted") == 1


def test_a_rollback_landing_after_the_last_judgement_wins_over_the_promotion(world) -> None:
    settings, registry, v = world
    looks = [0]

    def rollback_during_the_last_look() -> None:
        looks[0] += 1
        if looks[0] == 2:  # step 2's (100%) judgement reads this; the promotion comes next
            rollback_step(settings, reason="ops: pulled by hand", by="bob", registry=Registry(settings))

    source = Scripted(both(v["2"], healthy()), on_read=rollback_during_the_last_look)
    result = rollout_step(settings, v["2"], source, tick_s=TICK_S, sleep=ticking())
    assert result["outcome"] == "aborted", result
    settled(registry, v["1"])
    assert registry.get_version(v["2"]).tags["rolled_back"] == "ops: pulled by hand"


def test_losing_the_lease_stops_the_controller_within_a_tick(world) -> None:
    from tuneloop.registry.lock import lock_model_name

    settings, registry, v = world
    lock = lock_model_name(registry.model_name, "rollout")

    def broken_by_another(tick: int) -> None:
        if tick == 1:  # another controller broke our expired lease and took the lock
            registry.client.set_registered_model_tag(lock, "holder", "elsewhere/1/abc")

    with pytest.raises(RegistryError, match="stopped: the rollout lock"):
        rollout_step(
            settings,
            v["2"],
            Scripted(both(v["2"], healthy())),
            tick_s=TICK_S,
            sleep=ticking(broken_by_another),
        )
    aliases, tags = model(registry)
    assert aliases["champion"] == v["1"] and tags["canary_weight"] == "0.5"  # nothing acted after the loss
    assert "canary.step" in events(registry, v["2"]) and events(registry, v["2"]).count("canary.step") == 1


def test_the_next_run_finishes_a_rollout_a_dead_controller_left_before_its_own(world, monkeypatch) -> None:
    """A killed controller's rollout was resumed by nothing while a newer version was approved."""
    from test_rollout_sources import _Replica
    from tuneloop.steps.continual import approved_candidate, roll_out
    from tuneloop.steps.rollout_state import set_weight

    for var in ("TUNELOOP_ROLLOUT_PROMETHEUS_URL", "TUNELOOP_ROLLOUT_REPLICAS_URL", "TUNELOOP_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    settings, registry, v = world
    registry.set_alias("canary", v["2"])  # what the dead controller left: canary at 50%, recorded
    write_state(registry, run_id="", champion=v["1"], by="ctl", step=0, started_at=0, quality=frozenset())
    write_state(registry, version=v["2"])
    set_weight(registry, 0.5)
    registry.set_tags(v["2"], {"approval": "rejected"})  # withdrawn while nobody watched the canary
    registry.set_tags(v["3"], {"approval": "pending"})
    registry.set_tags(v["4"], {"approval": "pending"})
    assert approved_candidate(settings) == v["2"]  # nothing approved: the recorded rollout is next

    registry.set_tags(v["3"], {"approval": "approved"})
    replica = _Replica()  # a service that answers nothing: every step of v3 ends at its deadline
    try:
        result = roll_out(settings, v["3"], service_url=replica.url.removesuffix("/metrics"))
    finally:
        replica.server.shutdown()
        replica.server.server_close()
    first = result["finished_first"]
    assert first["version"] == v["2"] and first["outcome"] == "rolled_back" and "rejected" in first["reason"]
    assert result["version"] == v["3"] and result["outcome"] == "rolled_back", result
    assert "deadline" in result["reason"]
    settled(registry, v["1"])
