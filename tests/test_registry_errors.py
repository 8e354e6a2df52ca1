"""Registry reads say "none" only when MLflow says "not found"; any other failure is loud.

The store is a real HTTP endpoint (a small server in a thread) that answers as a broken MLflow
server does: 500 for every call, or MLflow's own RESOURCE_DOES_NOT_EXIST for a model that is not
there. The URI carries a password, which must never reach an error message.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tuneloop.config import load_settings, mask_uri
from tuneloop.registry.store import Registry, RegistryError

SECRET = "hunter2"


def _serve(status: int, body: dict[str, str]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://ops:{SECRET}@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow retries a 500 seven times with backoff (minutes); one answer is enough here.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture
def broken(no_retries: None, tmp_path) -> Iterator[Registry]:
    for uri in _serve(500, {"error_code": "INTERNAL_ERROR", "message": "database is down"}):
        yield Registry(load_settings(home=tmp_path / "home", tracking_uri=uri))


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.alias("champion"),
        lambda r: r.aliases(),
        lambda r: r.versions(),
        lambda r: r.clear_alias("challenger"),
        lambda r: r.ensure_model(),
        lambda r: r.experiment_id("tuneloop"),
        lambda r: r.get_version("1"),
    ],
    ids=["alias", "aliases", "versions", "clear_alias", "ensure_model", "experiment_id", "get_version"],
)
def test_a_failing_store_raises_a_clear_error_not_none(broken: Registry, call) -> None:
    with pytest.raises(RegistryError) as caught:
        call(broken)
    message = str(caught.value)
    assert "failed at the MLflow registry http://ops:****@127.0.0.1" in message
    assert "TUNELOOP_TRACKING_URI" in message
    assert SECRET not in message


def test_not_found_from_the_server_means_none(no_retries: None, tmp_path) -> None:
    missing = {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Registered Model not found"}
    for uri in _serve(404, missing):
        registry = Registry(load_settings(home=tmp_path / "home", tracking_uri=uri))
        assert registry.alias("champion") is None
        assert registry.aliases() == {}
        registry.clear_alias("challenger")
        with pytest.raises(RegistryError, match="has no version 7"):
            registry.get_version("7")


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("postgresql://mlflow:pa:ss@w0rd@db:5432/mlflow", "postgresql://mlflow:****@db:5432/mlflow"),
        ("postgresql://mlflow@db:5432/mlflow", "postgresql://mlflow@db:5432/mlflow"),
        ("https://u:p@mlflow.example.com/", "https://u:****@mlflow.example.com/"),
        (
            "postgresql://db/mlflow?user=x&password=s3&sslmode=require&api_token=t",
            "postgresql://db/mlflow?user=x&password=****&sslmode=require&api_token=****",
        ),
        ("sqlite:////home/me/.tuneloop/mlflow.db", "sqlite:////home/me/.tuneloop/mlflow.db"),
        ("http://mlflow:5000", "http://mlflow:5000"),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked
