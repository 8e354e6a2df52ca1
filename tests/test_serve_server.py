"""The service against a real `bentoml serve` subprocess on 127.0.0.1 and a real MLflow store.

One tiny model is trained and converted (v1: ONNX INT8); v2 is the same run registered again
without a conversion (so only the PyTorch merged model may serve it); v3 points at a conversion
whose INT8 file was tampered with after its checksum was recorded. The test moves aliases and the
canary weight in the registry, as a rollout controller would, and watches the server follow.
Tests run in file order on one server (each leaves champion = v1).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from tuneloop.config import PROJECT_ROOT, Settings, load_settings
from tuneloop.serve.scopes import TOKEN_SCOPES
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences, make_tiny_bert

pytestmark = pytest.mark.e2e

LENIENT = {
    "max_abs_logit_diff_fp32": 1.0,
    "int8_max_macro_f1_drop_points": 100,
    "int8_min_argmax_agreement": 0,
}
CONVERSION_TAGS = (
    "conversion",
    "conversion_path",
    "conversion_key",
    "int8_sha256",
    "onnx_sha256",
    "onnx_opt_sha256",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, MlflowClient]:
    from tuneloop.steps.convert import convert_step
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.round import train_step

    root = tmp_path_factory.mktemp("serve")
    policy = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    policy["conversion"] = LENIENT
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    keyword_sentences(["alpha", "beta", "gamma"], 20, seed=0).to_csv(root / "data.csv", index=False)
    overrides = {**TINY_TRAIN_SETTINGS, "epochs": 1}
    settings = load_settings(
        home=root / "home",
        base_model=str(make_tiny_bert(root / "tiny")),
        policy_path=root / "policy.yaml",
        **overrides,
    )
    ingest_step(settings, [root / "data.csv"])
    assert train_step(settings, progress=False)["version"] == "1"
    convert_step(settings, "1", calibrate=False, tensorrt="off")
    client = MlflowClient(settings.resolved_tracking_uri)
    name = settings.model_name
    v1 = client.get_model_version(name, "1")
    plain = {k: v for k, v in v1.tags.items() if k not in CONVERSION_TAGS}
    client.create_model_version(name, v1.source, v1.run_id, tags=plain)  # v2: no conversion
    folder = Path(client.download_artifacts(v1.run_id, v1.tags["conversion_path"], str(root / "conv")))
    for graph in ("model.int8.onnx", "model.opt.onnx"):  # whichever serves (int8_serve) is tampered
        with (folder / graph).open("ab") as handle:
            handle.write(b"\0")  # tampered after its sha256 was recorded
    client.log_artifacts(v1.run_id, str(folder), "conversions/tampered")
    tampered = {**v1.tags, "conversion_path": "conversions/tampered"}
    client.create_model_version(name, v1.source, v1.run_id, tags=tampered)  # v3
    return settings, client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(
    world: tuple[Settings, MlflowClient], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    settings, _ = world
    port = _free_port()
    env = {
        **os.environ,
        "TUNELOOP_HOME": str(settings.home_dir),
        "TUNELOOP_SERVE_POLL_S": "0.5",
        "TUNELOOP_SERVE_RETRY_FAILED_S": "0",
        "TUNELOOP_SERVE_SHADOW_SHARE": "0.5",
        # 5 s (10 polls) without a registry read stops the canary (the default is 60 s).
        "TUNELOOP_SERVE_MAX_SYNC_AGE_S": "5",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "BENTOML_DO_NOT_TRACK": "True",
        # Its own: BentoML empties the metrics folder under BENTOML_HOME when a server starts.
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml")),
    }
    for variable in TOKEN_SCOPES:  # any bearer token would turn auth on
        env.pop(variable, None)
    log = (tmp_path_factory.mktemp("serve-log") / "server.log").open("w")
    cmd = [sys.executable, "-m", "bentoml", "serve", "tuneloop.service:TuneloopService"]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        _wait(lambda: _get(client, "/livez") == 200, 90, "the server to answer /livez")
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        client.close()
        log.close()


def _get(client: httpx.Client, path: str) -> int:
    try:
        return client.get(path).status_code
    except httpx.TransportError:
        return 0


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _status(client: httpx.Client) -> dict[str, Any]:
    return dict(client.get("/status").json())


def _serving(client: httpx.Client, alias: str) -> str | None:
    model = _status(client)["aliases"][alias]
    return None if model is None else str(model["version"])


def _classify(client: httpx.Client, texts: list[str], key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"texts": texts} | ({"key": key} if key else {})
    response = client.post("/classify", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_not_ready_until_the_champion_is_loaded(world, server) -> None:
    settings, client = world
    assert _get(server, "/readyz") == 503 and _get(server, "/livez") == 200
    assert server.post("/classify", json={"texts": ["apple"]}).status_code == 503
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    _wait(lambda: _get(server, "/readyz") == 200, 60, "readiness after champion v1 is set")
    status = _status(server)
    # INT8 where the conversion timed it faster than fp32 on this host (int8_serve), else ORT fp32.
    serves = client.get_model_version(settings.model_name, "1").tags["int8_serve"]
    assert status["aliases"]["champion"]["backend"] == {"int8": "onnx-int8", "fp32": "onnx-fp32"}[serves]
    assert "tensorrt: unavailable" in " ".join(status["aliases"]["champion"]["notes"])


def test_classify_feedback_status_and_metrics(world, server) -> None:
    settings, _ = world
    texts = ["apple banana cherry", "river ocean", "engine wheel brake gear piston"]
    answer = _classify(server, texts)
    assert [p["model_version"] for p in answer["predictions"]] == ["1"] * 3
    first = answer["predictions"][0]
    assert first["label"] in {"alpha", "beta", "gamma"} and len(first["top_k"]) == 3
    assert first["top_k"][0] == {"label": first["label"], "score": first["score"]}
    ok = server.post(
        "/feedback", json={"request_id": answer["request_id"], "index": 2, "label": "gamma", "text": texts[2]}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["model_version"] == "1" and ok.json()["landed"] is True
    landed = list(settings.landing_dir.glob("feedback-*.jsonl"))
    assert len(landed) == 1 and '"source": "feedback"' in landed[0].read_text()
    assert not list(settings.landing_dir.glob(".*"))  # no in-flight file left behind
    # Once per (request, item): a replay is refused and counts nothing, whatever label it says.
    for label in ("gamma", "alpha"):
        again = server.post(
            "/feedback", json={"request_id": answer["request_id"], "index": 2, "label": label}
        )
        assert again.status_code == 409 and "given already" in again.json()["error"]
    # Only the text that item classified may be landed with it.
    swapped = server.post(
        "/feedback",
        json={"request_id": answer["request_id"], "index": 1, "label": "alpha", "text": "buy my stuff"},
    )
    assert swapped.status_code == 400 and "is not the text that item 1" in swapped.json()["error"]
    assert len(list(settings.landing_dir.glob("feedback-*.jsonl"))) == 1
    documented = server.get("/docs.json").json()["paths"]["/feedback"]["post"]["responses"]
    assert "409" in documented  # the published contract lists the replay answer
    forged = answer["request_id"][:-3] + "AAA"
    for body in ({"request_id": forged, "label": "gamma"}, {"request_id": "nope", "label": "gamma"}):
        refused = server.post("/feedback", json=body)
        assert refused.status_code == 400 and "request_id" in refused.json()["error"]
    out_of_range = server.post(
        "/feedback", json={"request_id": answer["request_id"], "index": 9, "label": "gamma"}
    )
    assert out_of_range.status_code == 400 and "index 9" in out_of_range.json()["error"]
    for bad in ({"texts": []}, {"texts": ["x" * 5000]}, {"texts": [None]}, {"texts": "apple"}):
        assert server.post("/classify", json=bad).status_code == 400
    metrics = server.get("/metrics").text
    for line in (
        'tuneloop_items_total{model_version="1",project="default"}',
        "tuneloop_feedback_total{correct=",
        "tuneloop_model_seconds_bucket{le=",
        'tuneloop_batch_items_count{model_version="1",project="default"}',
        'tuneloop_confidence_count{model_version="1",project="default"}',
    ):
        assert line in metrics
    fed = [line for line in metrics.splitlines() if line.startswith("tuneloop_feedback_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in fed) == 1.0, fed  # the replays counted nothing
    synced = [line for line in metrics.splitlines() if line.startswith("tuneloop_registry_sync_timestamp")]
    assert synced and time.time() - float(synced[0].rsplit(" ", 1)[1]) < 10, synced
    status = _status(server)
    assert status["last_sync"] and status["last_error"] is None and status["canary_weight"] == 0.0
    assert status["last_sync_age_s"] < 5 and status["canary_hold"] is None and status["auth"] == "off"


def test_canary_share_is_within_bounds_and_sticky_by_key(world, server) -> None:
    settings, client = world
    client.set_registered_model_alias(settings.model_name, "canary", "2")
    client.set_registered_model_tag(settings.model_name, "canary_weight", "0.3")
    _wait(lambda: _status(server)["canary_weight"] == 0.3, 60, "canary v2 at weight 0.3")
    assert _status(server)["aliases"]["canary"]["backend"] == "torch"  # no passed conversion
    versions = Counter(
        p["model_version"] for _ in range(10) for p in _classify(server, ["apple river"] * 40)["predictions"]
    )
    # 400 items at p 0.3: mean 120, sd sqrt(400 * 0.3 * 0.7) = 9.2; 4 sd = 37
    assert abs(versions["2"] - 120) <= 37 and versions["1"] + versions["2"] == 400
    by_key = {}
    for n in range(30):
        seen = {
            p["model_version"]
            for _ in range(2)
            for p in _classify(server, ["apple", "river"], key=f"user-{n}")["predictions"]
        }
        assert len(seen) == 1, f"key user-{n} was answered by {seen}"
        by_key[n] = seen.pop()
    assert set(by_key.values()) == {"1", "2"}  # 30 keys at 0.3: all on one side has p < 2e-5
    assert "tuneloop_shadow_total" in server.get("/metrics").text
    client.set_registered_model_tag(settings.model_name, "canary_weight", "0")
    client.delete_registered_model_alias(settings.model_name, "canary")
    _wait(lambda: _serving(server, "canary") is None, 60, "the canary to be withdrawn")


def test_swap_under_load_has_no_failed_request_and_rollback_is_from_memory(world, server) -> None:
    settings, client = world
    failures: list[str] = []
    seen: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as own:
            while not stop.is_set():
                try:
                    r = own.post("/classify", json={"texts": ["apple", "ocean", "piston"]})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        seen.extend(p["model_version"] for p in r.json()["predictions"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        client.set_registered_model_alias(settings.model_name, "champion", "2")  # promotion
        _wait(lambda: _serving(server, "champion") == "2", 60, "champion v2")
        time.sleep(1)
        client.set_registered_model_alias(settings.model_name, "champion", "1")  # rollback
        _wait(lambda: _serving(server, "champion") == "1", 60, "champion back to v1")
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    assert {"1", "2"} <= set(seen)
    status = _status(server)
    assert status["loads"]["1"] == 1  # rolled back in memory: v1 was never loaded again
    assert [m["version"] for m in status["retained"]] == ["2"]


def test_a_tampered_artifact_is_refused_while_the_old_model_serves(world, server) -> None:
    settings, client = world
    client.set_registered_model_alias(settings.model_name, "champion", "3")
    refused = _wait(lambda: _status(server)["refused"].get("3"), 60, "v3 to be refused")
    assert "sha256" in refused
    assert _get(server, "/readyz") == 200
    assert {p["model_version"] for p in _classify(server, ["apple"])["predictions"]} == {"1"}
    assert "v3 not served" in _status(server)["last_error"]
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    _wait(lambda: _status(server)["last_error"] is None, 60, "a clean sync with champion v1")


def test_an_unreadable_registry_keeps_the_champion_serving_and_stops_the_canary(world, server) -> None:
    settings, client = world
    client.set_registered_model_alias(settings.model_name, "canary", "2")
    client.set_registered_model_tag(settings.model_name, "canary_weight", "1.0")
    _wait(lambda: _status(server)["canary_weight"] == 1.0, 60, "canary v2 at weight 1")
    assert {p["model_version"] for p in _classify(server, ["apple", "ocean"])["predictions"]} == {"2"}
    db = sqlite3.connect(settings.home_dir / "mlflow.db", timeout=1, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # no reader gets in: the registry cannot be read
    try:
        _wait(lambda: "registry read failed" in (_status(server)["last_error"] or ""), 60, "a failed sync")
        # Past TUNELOOP_SERVE_MAX_SYNC_AGE_S (5 s) the canary is held: a rollback could go unseen.
        held = _wait(lambda: _status(server)["canary_hold"], 60, "the canary to be held")
        assert "registry was last read" in held and _status(server)["last_sync_age_s"] > 5
        assert {p["model_version"] for p in _classify(server, ["apple", "ocean"])["predictions"]} == {"1"}
        assert _get(server, "/readyz") == 200 and _status(server)["canary_weight"] == 0.0
    finally:
        db.execute("ROLLBACK")
        db.close()
    _wait(lambda: _status(server)["last_error"] is None, 60, "a clean sync after the registry is back")
    assert _status(server)["canary_hold"] is None
    assert {p["model_version"] for p in _classify(server, ["apple", "ocean"])["predictions"]} == {"2"}
    client.set_registered_model_tag(settings.model_name, "canary_weight", "0")
    client.delete_registered_model_alias(settings.model_name, "canary")
    _wait(lambda: _serving(server, "canary") is None, 60, "the canary to be withdrawn")
