"""The rollout controller against a real `bentoml serve` on 127.0.0.1 and a real MLflow store.

The model world is test_serve_server's `world` (tiny model, v1 converted); each rollout here rolls
out a copy of v1 (same run, same conversion) tagged gate=passed and approved, so a good canary
answers exactly like the champion. A tiny canary policy (2 steps of 3 s, 16 items a step) keeps
each rollout to seconds. Faults come from the service's fault switch
(TUNELOOP_SERVE_FAULT_VERSION / _ERROR_RATE / _LATENCY_MS), set per server at start.
Tests run in file order and share the registry. The e2e marker comes from tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from test_serve_hardening import free_port, running_server
from test_serve_server import _wait, world  # noqa: F401  (world is a fixture used below)
from tuneloop.config import Settings
from tuneloop.registry.store import RegistryError
from tuneloop.rollout.sources import EndpointSource, PrometheusSource
from tuneloop.steps.rollout import rollout_step
from tuneloop.steps.rollout_state import history_step, read_state, rollback_step

INTERVAL_S = 3.0
CANARY = {
    "steps": [50, 100],
    "min_requests_per_step": 16,
    "min_feedback_per_step": 8,
    "min_shadowed_per_step": 8,  # the server shadows half the canary's items
    "max_error_rate": 0.05,
    # Per item: the tiny model takes about a millisecond a call, a few items a call. The latency
    # fault adds 400 ms to a canary call of at most 8 items (2 clients x 4 texts): 50 ms an item.
    "max_p95_latency_ms": 40,
    "max_macro_f1_drop_points": 50.0,
    # Same model on both sides, so only sampling noise moves the label mix: with 3 labels and 16
    # items, total variation noise is about 0.4 * sqrt(3 / 16) = 0.17; 0.6 is 3.5x that.
    "max_prediction_drift": 0.6,
    "max_shadow_disagreement": 0.5,  # same model: it agrees with itself on every item
    "step_interval_seconds": INTERVAL_S,
    "step_deadline_seconds": 60.0,
}
TEXTS = ["apple banana cherry", "river ocean", "engine wheel brake gear piston", "apple river"]


@pytest.fixture(scope="module")
def rig(world: tuple[Settings, MlflowClient], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    """Settings with the tiny canary policy, champion v1, and approved copies of v1 by role."""
    settings, client = world
    root = tmp_path_factory.mktemp("rollout")
    policy = yaml.safe_load(Path(settings.policy_path).read_text())
    policy["canary"] = CANARY
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    fast = settings.model_copy(update={"policy_path": root / "policy.yaml"})
    name = settings.model_name
    client.set_registered_model_alias(name, "champion", "1")
    v1 = client.get_model_version(name, "1")
    base = {k: v for k, v in v1.tags.items() if not k.startswith("event.")}
    approved = {**base, "gate": "passed", "approval": "approved", "approval_by": "tester"}
    roles = ["good", "errors", "latency", "killed", "other", "killed-promoting", "prometheus"]
    copies = {
        r: client.create_model_version(name, v1.source, v1.run_id, tags=approved).version for r in roles
    }
    pending = {**approved, "approval": "pending"}
    copies["unapproved"] = client.create_model_version(name, v1.source, v1.run_id, tags=pending).version
    return {"settings": fast, "client": client, "v": {k: str(v) for k, v in copies.items()}, "root": root}


@pytest.fixture(scope="module")
def server(rig: dict[str, Any]) -> Iterator[httpx.Client]:
    env = {"TUNELOOP_SERVE_FAULT_VERSION": rig["v"]["errors"], "TUNELOOP_SERVE_FAULT_ERROR_RATE": "1"}
    with running_server(rig["settings"], rig["root"], TUNELOOP_SERVE_SHADOW_SHARE="0.5", **env) as client:
        yield client


@contextlib.contextmanager
def traffic(server: httpx.Client, canary: str) -> Iterator[dict[str, Any]]:
    """Two clients classifying (with feedback), and a watcher noting when `canary` starts serving."""
    seen: dict[str, Any] = {"failures": [], "answers": 0, "canary_at": None}
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as own:
            while not stop.is_set():
                try:
                    r = own.post("/classify", json={"texts": TEXTS})
                    if r.status_code != 200:
                        seen["failures"].append(f"{r.status_code} {r.text[:200]}")
                        continue
                    seen["answers"] += 1
                    label = r.json()["predictions"][0]["label"]
                    own.post("/feedback", json={"request_id": r.json()["request_id"], "label": label})
                except httpx.HTTPError as exc:
                    seen["failures"].append(repr(exc))

    def watch() -> None:
        while not stop.is_set() and seen["canary_at"] is None:
            model = server.get("/status").json()["aliases"]["canary"]
            if model is not None and model["version"] == canary:
                seen["canary_at"] = time.monotonic()
            time.sleep(0.1)

    threads = [threading.Thread(target=client_loop) for _ in range(2)] + [threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    try:
        yield seen
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def roll(
    rig: dict[str, Any], server: httpx.Client, role: str, **kwargs: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    version = rig["v"][role]
    source = kwargs.pop("source", None) or EndpointSource([f"{server.base_url}/metrics"])
    with traffic(server, version) as seen:
        result = rollout_step(rig["settings"], version, source, tick_s=0.5, echo=print, **kwargs)
        seen["done_at"] = time.monotonic()
    assert seen["failures"] == [], seen["failures"][:5]  # nobody was failed, champion path included
    assert seen["answers"] > 20
    return result, seen


def settled(rig: dict[str, Any], server: httpx.Client, champion: str) -> None:
    """Registry and server agree: one champion, no canary, weight 0, no rollout in flight."""
    client, name = rig["client"], rig["settings"].model_name
    model = client.get_registered_model(name)
    aliases = {k: str(v) for k, v in model.aliases.items()}
    assert aliases.get("champion") == champion and "canary" not in aliases
    assert model.tags.get("canary_weight") == "0" and read_state_of(rig) is None

    def serving() -> bool:
        status = server.get("/status").json()
        return bool(
            status["aliases"]["champion"]["version"] == champion and status["aliases"]["canary"] is None
        )

    _wait(serving, 30, f"the server to serve only v{champion}")


def read_state_of(rig: dict[str, Any]) -> Any:
    from tuneloop.registry.store import Registry

    return read_state(Registry(rig["settings"]))


def test_good_canary_is_promoted(rig, server) -> None:
    result, _ = roll(rig, server, "good")
    assert result["outcome"] == "promoted", result
    assert result["previous"] == "1"
    settled(rig, server, rig["v"]["good"])
    runs = rig["client"].search_runs(
        [rig["client"].get_experiment_by_name("tuneloop-rollouts").experiment_id],
        filter_string=f"tags.model_version = '{rig['v']['good']}'",
    )
    assert runs and runs[0].data.tags["outcome"] == "promoted"
    history = rig["client"].get_metric_history(runs[0].info.run_id, "canary_items")
    assert len(history) >= 2  # step metrics over time


@pytest.mark.parametrize("role", ["errors", "latency"])
def test_faulty_canary_is_rolled_back_within_two_windows(rig, server, role, tmp_path_factory) -> None:
    champion = str(rig["client"].get_registered_model(rig["settings"].model_name).aliases["champion"])
    with contextlib.ExitStack() as stack:
        target = server
        if role == "latency":
            # Its own BENTOML_HOME: two servers sharing one share the prometheus multiprocess
            # files that /metrics sums, and clobber each other's counts.
            folder = tmp_path_factory.mktemp("slow")
            env = {
                "TUNELOOP_SERVE_FAULT_VERSION": rig["v"]["latency"],
                "TUNELOOP_SERVE_FAULT_LATENCY_MS": "400",
                "BENTOML_HOME": str(folder / "bentoml"),
            }
            target = stack.enter_context(running_server(rig["settings"], folder, **env))
        result, seen = roll(rig, target, role)
        assert result["outcome"] == "rolled_back", result
        assert ("error rate" if role == "errors" else "p95 latency") in result["reason"]
        assert seen["canary_at"] is not None
        took = seen["done_at"] - seen["canary_at"]
        assert took <= 2 * INTERVAL_S, f"rolled back {took:.1f} s after the canary began serving"
        settled(rig, target, champion)
    tags = rig["client"].get_model_version(rig["settings"].model_name, rig["v"][role]).tags
    assert tags["rolled_back"] == result["reason"]


def test_killed_controller_resumes_and_a_second_rollout_is_refused(rig, server) -> None:
    settings, version = rig["settings"], rig["v"]["killed"]
    env = {
        **os.environ,
        "TUNELOOP_HOME": str(settings.home_dir),
        "TUNELOOP_POLICY_PATH": str(settings.policy_path),
    }
    cmd = [
        sys.executable,
        "-m",
        "tuneloop.cli.rollout",
        "rollout",
        version,
        "--lease",
        "4",
        "--tick",
        "0.5",
        "--metrics-url",
        f"{server.base_url}/metrics",
    ]
    with traffic(server, version) as seen:
        proc = subprocess.Popen(cmd, env=env)
        try:
            _wait(
                lambda: (s := read_state_of(rig)) is not None and s.version == version,
                60,
                "the rollout to start",
            )
            with pytest.raises(RegistryError, match="held by"):
                rollout_step(settings, rig["v"]["other"], EndpointSource([f"{server.base_url}/metrics"]))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert read_state_of(rig).version == version  # the registry remembers the rollout
        source = EndpointSource([f"{server.base_url}/metrics"])
        result = rollout_step(settings, version, source, wait_s=10, lease_s=4, tick_s=0.5, echo=print)
    assert seen["failures"] == []
    assert result["outcome"] == "promoted", result
    settled(rig, server, version)


# Runs the rollout CLI with one alias move made deadly: the process SIGKILLs itself just before it,
# as a kill -9 landing there would. Its `aliases` lease is cut to 3 s (the deployment default is
# 60 s) so the resuming controller is not kept waiting a minute for the dead holder's lock.
DYING = """
import os, runpy, signal, sys
from tuneloop.registry.aliases import AliasStore
method, target = sys.argv.pop(1), sys.argv.pop(1)
AliasStore.lock.__wrapped__.__kwdefaults__["lease_s"] = 3.0
original = getattr(AliasStore, method)
def dying(self, alias, *rest):
    if alias == target:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, alias, *rest)
setattr(AliasStore, method, dying)
sys.argv[0] = "tuneloop-rollout"
runpy.run_module("tuneloop.cli.rollout", run_name="__main__")
"""


def _killed_inside(rig: dict[str, Any], server: httpx.Client, version: str, method: str, alias: str) -> int:
    """Run a controller that dies at `method(alias)`; return its exit status (-9 when it got there)."""
    settings = rig["settings"]
    env = {
        **os.environ,
        "TUNELOOP_HOME": str(settings.home_dir),
        "TUNELOOP_POLICY_PATH": str(settings.policy_path),
    }
    args = [
        "rollout",
        version,
        "--lease",
        "4",
        "--tick",
        "0.5",
        "--metrics-url",
        f"{server.base_url}/metrics",
    ]
    proc = subprocess.run([sys.executable, "-c", DYING, method, alias, *args], env=env, timeout=120)
    return proc.returncode


def _events_since_start(rig: dict[str, Any], version: str) -> list[str]:
    """The version's audit events since its last canary.started, oldest first."""
    tags = rig["client"].get_model_version(rig["settings"].model_name, version).tags
    names = [k.split(".", 2)[2] for k in sorted(k for k in tags if k.startswith("event."))]
    start = len(names) - 1 - names[::-1].index("canary.started")
    return names[start:]


def test_controller_killed_inside_the_rollback_is_finished_from_its_intent(rig, server) -> None:
    settings, version = rig["settings"], rig["v"]["errors"]  # the server fails its every call
    champion = str(rig["client"].get_registered_model(settings.model_name).aliases["champion"])
    with traffic(server, version) as seen:
        assert _killed_inside(rig, server, version, "clear_alias", "canary") == -signal.SIGKILL
        model = rig["client"].get_registered_model(settings.model_name)
        # killed inside the rollback: the weight went to 0 before the alias was to move
        assert model.tags["canary_weight"] == "0" and str(model.aliases["canary"]) == version
        assert "error rate" in json.loads(model.tags["rollback_pending"])["reason"]
        source = EndpointSource([f"{server.base_url}/metrics"])
        result = rollout_step(settings, version, source, wait_s=10, lease_s=4, tick_s=0.5, echo=print)
    assert seen["failures"] == []
    assert result["outcome"] == "rolled_back" and "error rate" in result["reason"], result
    settled(rig, server, champion)
    moves = _events_since_start(rig, version)
    assert moves.index("canary.weight") < moves.index("rolled_back") and moves.count("rolled_back") == 1


def test_controller_killed_inside_the_promotion_is_finished_on_resume(rig, server) -> None:
    settings, version = rig["settings"], rig["v"]["killed-promoting"]
    champion = str(rig["client"].get_registered_model(settings.model_name).aliases["champion"])
    with traffic(server, version) as seen:
        assert _killed_inside(rig, server, version, "set_alias", "champion") == -signal.SIGKILL
        model = rig["client"].get_registered_model(settings.model_name)
        # killed inside the promotion: traffic was back on the champion before `champion` moved
        assert model.tags["canary_weight"] == "0" and str(model.aliases["champion"]) == champion
        assert "promotion_pending" in rig["client"].get_model_version(settings.model_name, version).tags
        source = EndpointSource([f"{server.base_url}/metrics"])
        result = rollout_step(settings, version, source, wait_s=10, lease_s=4, tick_s=0.5, echo=print)
    assert seen["failures"] == []
    assert result["outcome"] == "promoted" and result["previous"] == champion, result
    settled(rig, server, version)
    moves = _events_since_start(rig, version)
    assert moves.index("canary.weight") < moves.index("promoted") and moves.count("promoted") == 1


def test_unapproved_or_unconverted_version_cannot_roll_out(rig, server) -> None:
    source = EndpointSource([f"{server.base_url}/metrics"])
    with pytest.raises(RegistryError, match="not approved"):
        rollout_step(rig["settings"], rig["v"]["unapproved"], source)
    with pytest.raises(RegistryError, match="conversion"):
        rollout_step(rig["settings"], "2", source)  # world's v2: never converted
    assert read_state_of(rig) is None


def test_prometheus_source_drives_a_rollout(rig, server, tmp_path_factory) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the `prometheus` binary is not installed (Debian: apt-get install prometheus)")
    folder = tmp_path_factory.mktemp("prometheus")
    target = server.base_url.host + ":" + str(server.base_url.port)
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "tuneloop", "static_configs": [{"targets": [target]}]}],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (folder / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        source = PrometheusSource(f"http://127.0.0.1:{port}", selector='{job="tuneloop"}')

        def scraped() -> bool:
            with contextlib.suppress(Exception):
                return bool(source.read())
            return False

        _wait(scraped, 60, "Prometheus to scrape the service")
        champion = str(rig["client"].get_registered_model(rig["settings"].model_name).aliases["champion"])
        assert source.read()[champion].items > 0
        result, _ = roll(rig, server, "prometheus", source=source)
        assert result["outcome"] == "promoted", result
        assert result["figures"]["canary_items"] >= CANARY["min_requests_per_step"]
        settled(rig, server, rig["v"]["prometheus"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_rollback_command_restores_previous_and_history_lists_the_moves(rig, server) -> None:
    before = {
        k: str(v) for k, v in rig["client"].get_registered_model(rig["settings"].model_name).aliases.items()
    }
    result = rollback_step(rig["settings"], reason="test: back to the last good", by="tester")
    assert result == {
        "action": "champion_restored",
        "from": before["champion"],
        "champion": before["previous"],
    }
    settled(rig, server, before["previous"])
    records = history_step(rig["settings"])["records"]
    events = {(r["version"], r["event"]) for r in records}
    assert (rig["v"]["errors"], "rolled_back") in events and (rig["v"]["good"], "promoted") in events
    assert (before["previous"], "champion.restored") in events
    rolled = next(r for r in records if r["version"] == rig["v"]["errors"] and r["event"] == "rolled_back")
    assert rolled["from"] == rig["v"]["errors"] and rolled["figures"]["canary_errors"] > 0 and rolled["by"]
