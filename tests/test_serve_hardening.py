"""Hardening against a real `bentoml serve` subprocess on 127.0.0.1: bad requests and bearer auth.

The model world (a tiny model trained, registered and converted in a real MLflow store) is
test_serve_server's `world` fixture. Every malformed request must get a 4xx with an error message,
never a 5xx, and the service must still be ready afterwards; auth is tried on one server with
every token variable set (the all-scopes TUNELOOP_API_TOKEN and the three scoped ones) and one
without. The e2e marker comes from tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from test_serve_server import _wait, world  # noqa: F401  (world is a fixture used below)
from tuneloop.config import Settings
from tuneloop.serve.scopes import TOKEN_SCOPES

TOKEN = "hardening-test-token"
# The scoped tokens the guarded server also takes: variable -> its token.
SCOPED = {
    "TUNELOOP_METRICS_TOKEN": "scrape-only-token",
    "TUNELOOP_CLASSIFY_TOKEN": "classify-only-token",
    "TUNELOOP_FEEDBACK_TOKEN": "feedback-only-token",
}
MB20 = 20 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_of(client: httpx.Client, path: str, **kwargs: Any) -> int:
    try:
        return client.get(path, **kwargs).status_code
    except httpx.TransportError:
        return 0


@contextlib.contextmanager
def running_server(settings: Settings, log_dir: Path, **env: str) -> Iterator[httpx.Client]:
    """`bentoml serve` on a free loopback port with `env` on top; yields a client once it is ready."""
    port = free_port()
    full_env = {
        **os.environ,
        "TUNELOOP_HOME": str(settings.home_dir),
        "TUNELOOP_SERVE_POLL_S": "0.5",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "BENTOML_DO_NOT_TRACK": "True",
        # Its own: BentoML empties the metrics folder under BENTOML_HOME when a server starts.
        "BENTOML_HOME": str(log_dir / f"bentoml-{port}"),
        **env,
    }
    for variable in TOKEN_SCOPES:  # auth off unless the test asks for it
        if variable not in env:
            full_env.pop(variable, None)
    log = (log_dir / f"server-{port}.log").open("w")
    cmd = [sys.executable, "-m", "bentoml", "serve", "tuneloop.service:TuneloopService"]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)], env=full_env, stdout=log, stderr=log
    )
    headers = (
        {"authorization": f"Bearer {env['TUNELOOP_API_TOKEN']}"} if env.get("TUNELOOP_API_TOKEN") else {}
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers)
    client.server_process = proc  # type: ignore[attr-defined]  (the shutdown test signals it)
    try:
        _wait(lambda: status_of(client, "/readyz") == 200, 120, "the server to answer /readyz 200")
        yield client
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        client.close()
        log.close()


@pytest.fixture(scope="module")
def champion(world: tuple[Settings, MlflowClient]) -> Settings:  # noqa: F811
    settings, client = world
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    return settings


@pytest.fixture(scope="module")
def server(champion: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with running_server(champion, tmp_path_factory.mktemp("hardening-log")) as client:
        yield client


@pytest.fixture(scope="module")
def guarded(champion: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    log_dir = tmp_path_factory.mktemp("auth-log")
    with running_server(champion, log_dir, TUNELOOP_API_TOKEN=TOKEN, **SCOPED) as client:
        yield client


def chunked(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


JSON = {"content-type": "application/json"}
# (name, method, path, keyword arguments for httpx, expected status)
MATRIX: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("invalid JSON", "POST", "/classify", {"content": b'{"texts": ["a"', "headers": JSON}, 400),
    ("not JSON at all", "POST", "/classify", {"content": b"texts=a", "headers": JSON}, 400),
    ("body is a list", "POST", "/classify", {"json": ["apple"]}, 400),
    ("body is null", "POST", "/classify", {"content": b"null", "headers": JSON}, 400),
    ("empty body", "POST", "/classify", {"content": b"", "headers": JSON}, 400),
    ("texts missing", "POST", "/classify", {"json": {}}, 400),
    ("texts is a string", "POST", "/classify", {"json": {"texts": "apple"}}, 400),
    ("texts is a number", "POST", "/classify", {"json": {"texts": 7}}, 400),
    ("empty list", "POST", "/classify", {"json": {"texts": []}}, 400),
    ("null item", "POST", "/classify", {"json": {"texts": ["apple", None]}}, 400),
    ("number item", "POST", "/classify", {"json": {"texts": [1]}}, 400),
    ("object item", "POST", "/classify", {"json": {"texts": [{"text": "a"}]}}, 400),
    ("whitespace item", "POST", "/classify", {"json": {"texts": ["  "]}}, 400),
    ("huge text", "POST", "/classify", {"json": {"texts": ["apple " * 100_000]}}, 400),
    ("too many texts", "POST", "/classify", {"json": {"texts": ["apple"] * 65}}, 400),
    ("key not a string", "POST", "/classify", {"json": {"texts": ["a"], "key": 5}}, 400),
    ("key too long", "POST", "/classify", {"json": {"texts": ["a"], "key": "k" * 300}}, 400),
    ("deeply nested", "POST", "/classify", {"content": b'{"texts": ' + b"[" * 50_000, "headers": JSON}, 400),
    ("20 MB plain", "POST", "/classify", {"content": b" " * MB20, "headers": JSON}, 413),
    ("20 MB chunked", "POST", "/classify", {"content": chunked, "headers": JSON}, 413),
    ("GET on classify", "GET", "/classify", {}, 405),
    ("PUT on classify", "PUT", "/classify", {"json": {"texts": ["a"]}}, 405),
    ("DELETE on feedback", "DELETE", "/feedback", {}, 405),
    (
        "text/plain",
        "POST",
        "/classify",
        {"content": b'{"texts": ["a"]}', "headers": {"content-type": "text/plain"}},
        415,
    ),
    ("form body", "POST", "/classify", {"data": {"texts": "apple"}}, 415),
    ("no content type", "POST", "/classify", {"content": b'{"texts": ["a"]}'}, 415),
    ("feedback without id", "POST", "/feedback", {"json": {"label": "alpha"}}, 400),
    ("feedback forged id", "POST", "/feedback", {"json": {"request_id": "x.y", "label": "alpha"}}, 400),
    (
        "feedback index text",
        "POST",
        "/feedback",
        {"json": {"request_id": "x.y", "label": "a", "index": "one"}},
        400,
    ),
    ("feedback label null", "POST", "/feedback", {"json": {"request_id": "x.y", "label": None}}, 400),
    (
        "feedback non-ASCII id",
        "POST",
        "/feedback",
        {"json": {"request_id": "\u00d2.\u00ae", "label": "alpha"}},
        400,
    ),
    ("unknown path", "POST", "/predict", {"json": {"texts": ["a"]}}, 404),
]


def send(client: httpx.Client, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
    if callable(kwargs.get("content")):
        kwargs = {**kwargs, "content": kwargs["content"](MB20)}
    return client.request(method, path, **kwargs)


def test_every_malformed_request_gets_a_4xx_with_a_message_and_the_service_stays_ready(
    server: httpx.Client,
) -> None:
    wrong: list[str] = []
    for name, method, path, kwargs, expected in MATRIX:
        r = send(server, method, path, kwargs)
        if r.status_code != expected:
            wrong.append(f"{name}: {r.status_code} (expected {expected}) {r.text[:300]}")
        elif expected != 404:
            message = r.json().get("error")
            if not isinstance(message, str) or not message:
                wrong.append(f"{name}: {r.status_code} without an error message: {r.text[:300]}")
    assert not wrong, "\n".join(wrong)
    assert status_of(server, "/readyz") == 200
    ok = server.post("/classify", json={"texts": ["apple banana"]})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["model_version"] == "1"


def test_odd_text_is_classified_or_refused_as_not_text_never_crashed_on(server: httpx.Client) -> None:
    # NUL and emoji are plain text: classified. A lone surrogate escape (\\ud800) decodes to no
    # text any encoder takes: BentoML's JSON parser refuses it (400, naming where), before the
    # handler's own check (serve/limits.py) would.
    for raw in (b'{"texts": ["a\\u0000b"]}', '{"texts": ["🍎 çé"]}'.encode()):
        r = server.post("/classify", content=raw, headers=JSON)
        assert r.status_code == 200, f"{raw!r}: {r.status_code} {r.text[:300]}"
        assert len(r.json()["predictions"]) == 1
    for raw in (b'{"texts": ["apple", "\\ud800 apple"]}', b'{"texts": ["apple"], "key": "k\\udfff"}'):
        r = server.post("/classify", content=raw, headers=JSON)
        assert r.status_code == 400, f"{raw!r}: {r.status_code} {r.text[:300]}"
        assert "escape at line 1 column" in r.json()["error"], r.text
    assert status_of(server, "/readyz") == 200


def test_without_a_token_configured_nothing_asks_for_one(server: httpx.Client) -> None:
    bare = httpx.Client(base_url=server.base_url, timeout=30)
    with bare:
        assert bare.post("/classify", json={"texts": ["apple"]}).status_code == 200
        assert bare.get("/status").status_code == 200 and bare.get("/metrics").status_code == 200


def test_with_a_token_everything_but_the_probes_needs_it(guarded: httpx.Client) -> None:
    assert guarded.post("/classify", json={"texts": ["apple"]}).status_code == 200
    assert guarded.get("/status").status_code == 200 and guarded.get("/metrics").status_code == 200
    with httpx.Client(base_url=guarded.base_url, timeout=30) as anonymous:
        assert anonymous.get("/livez").status_code == 200 and anonymous.get("/readyz").status_code == 200
        for method, path in (
            ("POST", "/classify"),
            ("POST", "/feedback"),
            ("GET", "/status"),
            ("GET", "/metrics"),
        ):
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
                r = anonymous.request(method, path, json={"texts": ["a"]}, headers=headers)
                assert r.status_code == 401, f"{method} {path} {headers}: {r.status_code}"
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "TUNELOOP_API_TOKEN" in r.json()["error"]
        # refused on its headers: a 20 MB body without the token is never read
        r = anonymous.post("/classify", content=chunked(MB20), headers=JSON)
        assert r.status_code == 401


def test_each_scoped_token_opens_only_its_own_paths(guarded: httpx.Client) -> None:
    """Scrape, classify and feedback tokens each open their paths; elsewhere 403 naming the scope."""
    answer = guarded.post("/classify", json={"texts": ["apple"]}).json()  # the all-scopes token
    feedback = {"request_id": answer["request_id"], "index": 0, "label": "alpha"}
    classify = {"texts": ["apple"]}
    # variable -> [(method, path, body, expected status)]
    expected: dict[str, list[tuple[str, str, Any, int]]] = {
        "TUNELOOP_METRICS_TOKEN": [
            ("GET", "/metrics", None, 200),
            ("GET", "/status", None, 200),
            ("POST", "/feedback", feedback, 403),
            ("POST", "/classify", classify, 403),
        ],
        "TUNELOOP_CLASSIFY_TOKEN": [
            ("POST", "/classify", classify, 200),
            ("GET", "/docs.json", None, 200),
            ("POST", "/feedback", feedback, 403),
            ("GET", "/metrics", None, 403),
        ],
        "TUNELOOP_FEEDBACK_TOKEN": [
            ("GET", "/metrics", None, 403),
            ("POST", "/classify", classify, 403),
            ("POST", "/feedback", feedback, 200),
        ],
    }
    with httpx.Client(base_url=guarded.base_url, timeout=30) as bare:
        for variable, calls in expected.items():
            token = SCOPED[variable]
            for method, path, body, status in calls:
                r = bare.request(method, path, json=body, headers={"authorization": f"Bearer {token}"})
                assert r.status_code == status, f"{variable} {method} {path}: {r.status_code} {r.text[:200]}"
                if status == 403:
                    assert "lacks scope" in r.json()["error"] and token not in r.text
    auth = guarded.get("/status").json()["auth"]
    assert (
        auth.startswith("bearer: TUNELOOP_API_TOKEN (all scopes)")
        and "TUNELOOP_METRICS_TOKEN (metrics)" in auth
    )
    assert not any(token in auth for token in (TOKEN, *SCOPED.values()))


def test_sigterm_lets_a_request_in_flight_finish(champion: Settings, tmp_path: Path) -> None:
    """A request whose body is still arriving when SIGTERM lands is answered 200, then the server exits."""
    release = threading.Event()
    sent_first = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b'{"texts": ["apple banana", '
        sent_first.set()
        release.wait(30)
        yield b'"river ocean"]}'

    with running_server(champion, tmp_path) as client:
        proc = client.server_process  # type: ignore[attr-defined]
        answer: dict[str, Any] = {}

        def call() -> None:
            try:
                answer["response"] = client.post("/classify", content=slow_body(), headers=JSON)
            except httpx.HTTPError as exc:
                answer["error"] = repr(exc)

        caller = threading.Thread(target=call)
        caller.start()
        assert sent_first.wait(10)
        time.sleep(0.5)  # the request is inside the server, its body half read
        proc.send_signal(signal.SIGTERM)
        time.sleep(2)  # shutdown has begun: the request must still be taken to the end
        release.set()
        caller.join(30)
        assert "error" not in answer, answer.get("error")
        response = answer["response"]
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 2
        # It exits by itself, cleanly: 0, not killed by the signal (-15) or the harness (-9).
        code = proc.wait(timeout=60)
        assert code == 0, f"the server exited with {code} after SIGTERM"
        assert status_of(client, "/livez") == 0  # and nothing listens any more
