"""The demo's service and users: `tuneloop serve` as a subprocess, and synthetic traffic with feedback.

- `DemoService` starts `tuneloop serve` (one worker) on a free port of 127.0.0.1, with the demo's
  home, tracking URI, model name and policy in its environment, and stops its whole process group
  at the end, on an error or on Ctrl-C. `fault` passes the service's documented fault switch
  (TUNELOOP_SERVE_FAULT_VERSION / _ERROR_RATE / _LATENCY_MS, serve/settings.py): the demo restarts
  the service with it to rehearse a rollback.
- `Traffic` is a few clients sending /classify with the demo's texts and /feedback with their true
  labels, and counting what failed. A canary model call that raises is answered by the champion
  (serve/scoring.py), so any failed request is a failure on the champion's path.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from tuneloop.config import Settings

READY_TIMEOUT_S = 300.0  # a cold start on 2 busy cores: imports, registry read, model load, warm-up
# 8 texts a request from each of 2 clients: at the first canary step (5%) the 40 canary items a
# step needs take 40 / 0.05 = 800 items = 100 requests, a few seconds of INT8 MiniLM on 2 cores.
TEXTS_PER_REQUEST = 8
# Model calls of at most 8 items (TUNELOOP_SERVE_MAX_BATCH_SIZE; default 64). At 100% the canary
# answers every item while the champion scores only the shadowed 10%, in calls of an item or two,
# and the latency check compares the two p95s: 16-item calls measured 192 ms p95 on the busy
# 2-core CPU (over the policy's 150 ms), 8-item calls are about half that.
MAX_BATCH_ITEMS = 8


class ServiceError(ValueError):
    """The demo's service did not start or stopped; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port nobody listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(
    settings: Settings, bentoml_home: Path, fault: dict[str, str] | None = None
) -> dict[str, str]:
    """This environment plus where the demo's state is, one worker, a fast registry poll, no auth."""
    from tuneloop.steps.serve import TOKEN_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARIABLES}  # any one turns auth on
    env.update(
        TUNELOOP_HOME=str(settings.home_dir),
        TUNELOOP_TRACKING_URI=settings.resolved_tracking_uri,
        TUNELOOP_MODEL_NAME=settings.model_name,
        TUNELOOP_POLICY_PATH=str(Path(settings.policy_path).resolve()),
        TUNELOOP_SERVE_WORKERS="1",
        # 1 s instead of 5: the canary's weight changes every few seconds in the demo's policy.
        TUNELOOP_SERVE_POLL_S="1",
        TUNELOOP_SERVE_MAX_BATCH_SIZE=str(MAX_BATCH_ITEMS),
        # Its own BentoML home: the Prometheus multiprocess files /metrics sums live there, and a
        # restarted service must not add up its predecessor's counts.
        BENTOML_HOME=str(bentoml_home),
        BENTOML_DO_NOT_TRACK="True",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    for name in ("registry_uri", "artifact_root"):
        value = getattr(settings, name)
        if value:
            env[f"TUNELOOP_{name.upper()}"] = str(value)
    env.update(fault or {})
    return env


class DemoService:
    """`tuneloop serve` in a subprocess (its own process group), stopped on exit of the `with`."""

    def __init__(
        self, settings: Settings, fault: dict[str, str] | None = None, metrics_token: str | None = None
    ) -> None:
        self.settings, self.fault = settings, fault
        # With tenants, /status and /metrics need a token (the demo of several projects sets one).
        self.metrics_token = metrics_token
        self.headers = {"authorization": f"Bearer {metrics_token}"} if metrics_token else {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        folder = settings.work_dir / "demo"
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"serve-{self.port}.log"
        self.bentoml_home = folder / f"bentoml-{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DemoService:
        cmd = [sys.executable, "-m", "tuneloop.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", "1"]
        with self.log_path.open("wb") as log:
            # A new session: Ctrl-C in the terminal reaches the demo, which stops the service itself
            # (once, in order) instead of both racing to shut down.
            self.proc = subprocess.Popen(
                cmd,
                env=service_env(
                    self.settings,
                    self.bentoml_home,
                    {
                        **(self.fault or {}),
                        **({"TUNELOOP_METRICS_TOKEN": self.metrics_token} if self.metrics_token else {}),
                    },
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __enter__(self) -> DemoService:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM to the service's process group (graceful: in-flight requests finish), then SIGKILL;
        then its BentoML home goes (scratch: every start makes a new one). The log stays."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        shutil.rmtree(self.bentoml_home, ignore_errors=True)

    def log_tail(self, chars: int = 2000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return text[-chars:]

    def wait_ready(
        self, version: str | None = None, timeout_s: float = READY_TIMEOUT_S, project: str = "default"
    ) -> None:
        """Until /readyz answers 200 (and /status names `version` as `project`'s champion, when given)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ServiceError(f"the service stopped; {self.log_path} ends:\n{self.log_tail()}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
                if ready and (version is None or self.project_champions().get(project) == version):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ServiceError(
            f"the service at {self.url} was not ready within {timeout_s:.0f} s; "
            f"{self.log_path} ends:\n{self.log_tail()}"
        )

    def champion(self) -> str | None:
        import httpx

        model = httpx.get(f"{self.url}/status", timeout=5, headers=self.headers).json()["aliases"]["champion"]
        return None if model is None else str(model["version"])

    def project_champions(self) -> dict[str, str | None]:
        """Each hosted project's serving champion version (None while it has none)."""
        import httpx

        projects = httpx.get(f"{self.url}/status", timeout=5, headers=self.headers).json()["projects"]
        return {name: p["champion"] for name, p in projects.items()}


class Traffic:
    """`clients` threads classifying demo texts and sending their true labels as feedback.

    Feedback goes for every item the canary answered and for the first item of each request the
    champion answered, so both sides collect labelled answers (the policy's feedback check) without
    one /feedback call per item.
    """

    def __init__(
        self,
        url: str,
        samples: list[tuple[str, str]],
        canary: str,
        clients: int = 2,
        seed: int = 0,
        prefix: str = "",
        token: str | None = None,
        land: bool = False,
    ) -> None:
        self.url, self.samples, self.canary, self.clients = url, samples, canary, clients
        # A project's routes (`/v1/<project>`; "" for the default project's /classify) and the
        # tenant token its caller sends.
        self.prefix = prefix
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.land = land  # send each feedback's text too, so it lands for the project's next round
        self.rng = random.Random(seed)
        self.requests = 0
        self.answered: Counter[str] = Counter()  # items per version that answered
        self.failures: list[str] = []  # failed /classify requests: the champion's path
        self.feedback = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _loop(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=60, headers=self.headers) as client:
            while not self._stop.is_set():
                with self._lock:
                    batch = self.rng.sample(self.samples, min(TEXTS_PER_REQUEST, len(self.samples)))
                try:
                    self._one(client, batch)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")

    def _one(self, client: Any, batch: list[tuple[str, str]]) -> None:
        response = client.post(f"{self.prefix}/classify", json={"texts": [text for text, _ in batch]})
        with self._lock:
            self.requests += 1
            if response.status_code != 200:
                self.failures.append(f"/classify {response.status_code}: {response.text[:200]}")
                return
        body = response.json()
        versions = [str(p["model_version"]) for p in body["predictions"]]
        with self._lock:
            self.answered.update(versions)
        for index, (version, (text, label)) in enumerate(zip(versions, batch, strict=True)):
            if version == self.canary or index == 0:
                given = {"request_id": body["request_id"], "index": index, "label": label}
                sent = client.post(
                    f"{self.prefix}/feedback", json={**given, "text": text} if self.land else given
                )
                with self._lock:
                    self.feedback += sent.status_code == 200
