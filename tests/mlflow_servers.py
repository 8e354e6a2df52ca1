"""Real servers for the server-path tests: a fresh PostgreSQL database and an `mlflow server` process.

Same patterns as tests/test_server_path.py (trust auth on 127.0.0.1:5432, one database per use,
dropped after), shared by test_auth_server.py, test_registry_postgres_concurrency.py and
test_s3_artifacts.py. Not a test module itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG = "postgresql://postgres@127.0.0.1:5432"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(f"{PG}/test", connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432 ({exc}); .ci/run starts it")
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def pg_database(prefix: str = "tuneloop") -> Iterator[str]:
    """A new, empty PostgreSQL database; its URI, dropped (connections ended first) afterwards."""
    conn = _admin()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{PG}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str,
    *extra_args: str,
    env: dict[str, str] | None = None,
    workers: int = 1,
    ready_s: float = 120,
    port: int | None = None,
) -> Iterator[str]:
    """`mlflow server` on `port` (default: a free one) of 127.0.0.1 until the block ends; yields its URL.

    It runs in a session of its own and the whole process group is stopped at the end: its uvicorn
    workers are children that a signal to the `mlflow` process alone would leave running.

    The server's log goes to a temporary file, quoted when it exits early or fails to answer.
    """
    import httpx

    port = port or free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), *extra_args]
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    # The server must not sign its own requests with the test's client credentials.
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        server_env.pop(key, None)
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=server_env, start_new_session=True
        )

        def tail() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-3000:]

        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_s
            while True:
                if server.poll() is not None:
                    pytest.fail(f"mlflow server exited ({server.returncode}):\n{tail()}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not answer /health within {ready_s:.0f} s:\n{tail()}")
                time.sleep(0.5)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)


def write_auth_config(folder: Path, database_uri: str, admin_password: str) -> Path:
    """An MLflow basic-auth ini: users in `database_uri`, everyone READ unless granted more."""
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        "admin_username = admin\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each request checks its password with PBKDF2 (about 0.1 s of a shared core): remember a
        # good check for 60 s, as a busy server would.
        "auth_cache_ttl_seconds = 60\n"
    )
    return path
