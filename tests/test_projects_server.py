"""Three projects in one real `bentoml serve`: their tenants' tokens and quotas, and the memory pool.

The model world is test_serve_server's `world` (tiny model, v1 converted, default project). Projects
`b` and `c` are declared beside it and register copies of that v1 (same run, same conversion) in
their own registered models, so every project serves the same bytes under its own aliases, feedback
key and metrics label. Two rollouts at once through one service (one promoted, one rolled back, no
cross-talk in aliases, metrics or landing) are tests/test_demo_story.py's two-project demo. The e2e
marker comes from tests/conftest.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from test_rollout_server import CANARY
from test_serve_hardening import running_server
from test_serve_server import _wait, world  # noqa: F401  (world is a fixture used below)
from tuneloop.config import Settings, load_settings
from tuneloop.projects import add_project
from tuneloop.rollout.sources import parse_prometheus_text
from tuneloop.steps.tenants import add_tenant

METRICS_TOKEN = "metrics-token-for-the-projects-test"


def _copy(client: MlflowClient, name: str, source: Any, tags: dict[str, str]) -> str:
    return str(client.create_model_version(name, source.source, source.run_id, tags=tags).version)


@pytest.fixture(scope="module")
def rig(world: tuple[Settings, MlflowClient], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    settings, client = world
    root = tmp_path_factory.mktemp("projects")
    policy = yaml.safe_load(Path(settings.policy_path).read_text())
    policy["canary"] = CANARY
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    for project in ("b", "c"):
        add_project(settings, project, policy=root / "policy.yaml")
    default = settings.model_copy(update={"policy_path": root / "policy.yaml"})
    b = load_settings(home=settings.home_dir, project="b")
    v1 = client.get_model_version(settings.model_name, "1")
    base = {k: v for k, v in v1.tags.items() if not k.startswith("event.")}
    approved = {**base, "gate": "passed", "approval": "approved", "approval_by": "tester"}
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    for project in ("b", "c"):
        name = f"tuneloop-{project}"
        client.create_registered_model(name)
        assert _copy(client, name, v1, approved) == "1"
        client.set_registered_model_alias(name, "champion", "1")
    tokens = {
        tenant: add_tenant(settings, tenant, projects, rps=rps, burst=burst)["token"]
        for tenant, projects, rps, burst in (
            ("app-default", ["default"], 200.0, 400),
            ("app-b", ["b"], 200.0, 400),
            ("both", ["default", "b", "c"], 200.0, 400),
            ("greedy", ["b"], 1.0, 2),
        )
    }
    graph = "model.int8.onnx" if v1.tags["int8_serve"] == "int8" else "model.opt.onnx"
    folder = Path(client.download_artifacts(v1.run_id, f"{v1.tags['conversion_path']}/{graph}", str(root)))
    return {
        "default": default,
        "b": b,
        "client": client,
        "tokens": tokens,
        "root": root,
        "graph_bytes": folder.stat().st_size,
    }


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(rig: dict[str, Any]) -> Iterator[httpx.Client]:
    env = {"TUNELOOP_METRICS_TOKEN": METRICS_TOKEN}
    with running_server(rig["default"], rig["root"], **env) as client:
        yield client


def _series(server: httpx.Client, name: str) -> list[tuple[dict[str, str], float]]:
    text = server.get("/metrics", headers=_auth(METRICS_TOKEN)).text
    return [(labels, value) for sample, labels, value in parse_prometheus_text(text) if sample == name]


def test_a_token_is_refused_on_another_projects_classify_and_feedback(rig, server) -> None:
    tokens = rig["tokens"]
    body = {"texts": ["apple river"]}
    assert server.post("/v1/b/classify", json=body).status_code == 401  # no token
    for path in ("/v1/b/classify", "/v1/b/feedback"):
        answer = server.post(path, json=body, headers=_auth(tokens["app-default"]))
        assert answer.status_code == 403 and "b" in answer.json()["error"], answer.text
    for path in ("/classify", "/v1/default/classify", "/feedback", "/v1/default/feedback"):
        assert server.post(path, json=body, headers=_auth(tokens["app-b"])).status_code == 403
    assert server.post("/classify", json=body, headers=_auth(tokens["app-default"])).status_code == 200
    # A request id of one project is no feedback for another: each signs with its own key.
    issued = server.post("/v1/default/classify", json=body, headers=_auth(tokens["both"])).json()
    feedback = {"request_id": issued["request_id"], "label": issued["predictions"][0]["label"]}
    answer = server.post("/v1/b/feedback", json=feedback, headers=_auth(tokens["both"]))
    assert answer.status_code == 400, answer.text
    assert (
        server.post("/v1/default/feedback", json=feedback, headers=_auth(tokens["both"])).status_code == 200
    )


def test_a_tenant_over_its_quota_gets_429_with_retry_after_and_the_others_do_not(rig, server) -> None:
    tokens, body = rig["tokens"], {"texts": ["apple river"]}
    codes, waits = [], []
    for _ in range(6):
        answer = server.post("/v1/b/classify", json=body, headers=_auth(tokens["greedy"]))
        codes.append(answer.status_code)
        if answer.status_code == 429:
            waits.append(int(answer.headers["retry-after"]))
        assert server.post("/v1/b/classify", json=body, headers=_auth(tokens["app-b"])).status_code == 200
    assert codes[:2] == [200, 200] and codes.count(429) >= 3, codes  # burst 2, then 1 a second
    assert waits and all(w >= 1 for w in waits)
    throttled = _series(server, "tuneloop_tenant_throttled_total")
    assert sum(v for labels, v in throttled if labels["tenant"] == "greedy") >= 3
    assert sum(v for labels, v in throttled if labels["tenant"] == "app-b") == 0


def test_the_least_recently_used_project_is_evicted_and_reloads_while_the_pinned_champion_stays(rig) -> None:
    # Room for the pinned default champion and one more model: b and c take turns.
    budget_mb = 2.5 * rig["graph_bytes"] / 1e6
    env = {
        "TUNELOOP_SERVE_MEMORY_MB": f"{budget_mb:.6f}",
        "TUNELOOP_SERVE_PINNED": "default",
        "TUNELOOP_METRICS_TOKEN": METRICS_TOKEN,
    }
    token = rig["tokens"]["both"]
    with running_server(rig["default"], rig["root"], **env) as server:

        def status(project: str) -> dict[str, Any]:
            return dict(server.get(f"/v1/{project}/status", headers=_auth(METRICS_TOKEN)).json())

        assert status("b")["dormant"] and status("c")["dormant"]  # lazy: nothing asked for them yet
        champion = status("default")["aliases"]["champion"]["version"]
        for project in ("b", "c", "b"):
            started = time.monotonic()
            answer = server.post(f"/v1/{project}/classify", json={"texts": ["apple"]}, headers=_auth(token))
            assert answer.status_code == 200, answer.text
            print(f"{project}: answered in {time.monotonic() - started:.2f} s")
        assert status("b")["loads"] == {"1": 2}  # loaded, evicted by c, loaded again
        assert status("c")["dormant"] and status("c")["evictions"] == 1
        assert not status("b")["dormant"]
        pinned = status("default")
        assert pinned["loads"] == {champion: 1} and pinned["evictions"] == 0 and not pinned["dormant"]
        assert not pinned["memory"]["over_budget"]
        evictions = {labels["project"]: v for labels, v in _series(server, "tuneloop_model_evictions_total")}
        loads = {labels["project"]: v for labels, v in _series(server, "tuneloop_model_loads_total")}
        assert evictions == {"b": 1.0, "c": 1.0} and loads["b"] == 2.0 and loads["default"] == 1.0
        _wait(lambda: status("b")["aliases"]["champion"] is not None, 10, "b to stay loaded")
