"""`mlflow models serve -m models:/<name>@champion --env-manager local` answers /invocations with
what the model predicts in process (and what `tuneloop evaluate` predicts): MLflow's own server on
a registered tuneloop version, on 127.0.0.1, started and killed within the test (e2e by conftest)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest

from tuneloop.config import load_settings
from tuneloop.registry.store import Registry
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.round import predictor, train_step
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences

LABELS = ["alpha", "beta", "gamma"]
START_TIMEOUT_S = 120  # MLflow's CLI, uvicorn and the model load: ~15 s on the quiet 2-core CPU


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    from tuneloop.testing import make_tiny_bert

    root = tmp_path_factory.mktemp("mlflow-serve")
    keyword_sentences(LABELS, 30, seed=0).to_csv(root / "data.csv", index=False)
    settings = load_settings(
        home=root / "home",
        base_model=str(make_tiny_bert(root / "tiny", hidden_size=128)),
        epochs=3,
        **TINY_TRAIN_SETTINGS,
    )
    ingest_step(settings, [root / "data.csv"])
    version = train_step(settings, progress=False)["version"]
    Registry(settings).set_alias("champion", version)  # stands in for approve + promote
    return settings, version, root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(client: httpx.Client, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if client.get("/ping").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no /ping answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def test_mlflow_models_serve_answers_with_the_models_predictions(champion, tmp_path) -> None:
    settings, version, _ = champion
    uri = f"models:/{settings.model_name}@champion"
    texts = keyword_sentences(LABELS, 4, seed=21)["text"].tolist()
    in_process = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": texts}))
    adapter = Registry(settings).download(version, "adapter", tmp_path / "adapter")
    assert in_process["label"].tolist() == predictor(adapter, settings.max_length)(texts)  # = evaluate

    port, log = _free_port(), tmp_path / "serve.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": settings.resolved_tracking_uri,  # how MLflow (and the model) find the registry
        "MLFLOW_REGISTRY_URI": settings.resolved_registry_uri,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # MLflow execs `uvicorn` by name: the environment's bin folder must be on PATH (an activated venv).
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    with log.open("w") as out:
        # Its own session, so the uvicorn worker it spawns is killed with it.
        proc = subprocess.Popen(
            [*cmd, "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        _wait_ready(client, proc, log)
        split = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}
        for body in (split, {"inputs": texts}, {"dataframe_records": [{"text": t} for t in texts]}):
            response = client.post("/invocations", json=body)
            assert response.status_code == 200, response.text
            served = response.json()["predictions"]
            assert [p["label"] for p in served] == in_process["label"].tolist()
            assert [p["score"] for p in served] == pytest.approx(in_process["score"].tolist(), abs=1e-6)
            assert [len(p["top_k"]) for p in served] == [3] * len(texts)
        assert "loaded with torch" in log.read_text()
    finally:
        client.close()
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it has not gone in 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):  # the group has gone already
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue
