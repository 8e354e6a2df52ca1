"""The registry follower under trouble, with fakes for the registry and the models.

A slow download does not hold up the next registry read, a hung one is given up, /status stays
consistent while the poll and load threads change what it reads, registry errors are shown with
their secrets masked, and a worker that has not read the registry for too long stops its canary.
The registry source's own HTTP timeouts are checked against a server that never answers.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tuneloop.serve.breaker import CircuitBreaker
from tuneloop.serve.bundle import LoadedModel
from tuneloop.serve.follower import Follower, RegistryState
from tuneloop.serve.freshness import canary_hold
from tuneloop.serve.routing import item_key
from tuneloop.serve.scoring import Item, score_items


class Fixed:
    labels = ["a", "b"]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.tile(np.array([[0.9, 0.1]], dtype=np.float32), (len(texts), 1))


class Source:
    """A registry whose state tests set, and whose loads can be held or made to fail."""

    def __init__(self, state: RegistryState) -> None:
        self.state = state
        self.hold: dict[str, threading.Event] = {}  # version -> released when set
        self.started: dict[str, threading.Event] = {}
        self.fail_read: Exception | None = None
        self.fail_load: Exception | None = None

    def read_state(self) -> RegistryState:
        if self.fail_read is not None:
            raise self.fail_read
        return self.state

    def load(self, version: str) -> LoadedModel:
        self.started.setdefault(version, threading.Event()).set()
        if version in self.hold:
            self.hold[version].wait(30)
        if self.fail_load is not None:
            raise self.fail_load
        return LoadedModel(version, "fake", Fixed())


def in_thread(call, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    """Run `call` in a thread; whether it finished within `timeout` seconds."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def test_a_slow_download_does_not_hold_up_the_next_registry_read() -> None:
    source = Source(RegistryState({"champion": "1"}, 0.0))
    follower = Follower(source, poll_s=1, retain_s=100, retry_failed_s=50)
    assert follower.poll_once().champion is not None
    source.hold["2"] = threading.Event()
    source.state = RegistryState({"champion": "1", "canary": "2"}, 0.5)
    loading = threading.Thread(target=follower.poll_once, daemon=True)  # v2's download hangs
    loading.start()
    assert source.started.setdefault("2", threading.Event()).wait(10)
    # The controller rolls the canary back while v2 is still downloading: the next read sees it.
    source.state = RegistryState({"champion": "1"}, 0.0)
    assert in_thread(follower.poll_once, 3), "the registry read waited for a download"
    assert follower.bundle.canary is None and follower.bundle.canary_weight == 0.0
    assert (follower.sync_age() or 0.0) < 3 and "2" in follower.status()["loading"]
    source.hold["2"].set()
    loading.join(10)
    assert follower.bundle.loaded().keys() == {"1"}  # v2 came in after it stopped being wanted


def test_a_load_that_hangs_is_given_up_while_the_last_champion_serves() -> None:
    source = Source(RegistryState({"champion": "1"}, 0.0))
    # The first load is instant but settles the heap (a full gc.collect of everything the test
    # process has imported): it took over 2 s in a loaded CI run, so it gets 120 s; the hung one 2 s.
    follower = Follower(source, poll_s=1, retain_s=100, retry_failed_s=50, load_timeout_s=120.0)
    assert follower.poll_once().champion is not None
    follower.load_timeout_s = 2.0
    source.hold["3"] = threading.Event()  # never released: a download that hangs
    source.state = RegistryState({"champion": "3"}, 0.0)
    assert in_thread(follower.poll_once, 15), "a hung download held the poll"
    status = follower.status()
    assert status["aliases"]["champion"]["version"] == "1"
    assert "longer than 2 s" in status["refused"]["3"] and "v3 not served" in status["last_error"]
    follower.poll_once()  # within retry_failed_s: not tried again, still said
    assert "v3 not served" in follower.status()["last_error"]
    source.hold["3"].set()


def test_status_is_one_consistent_copy_while_polls_and_loads_change_it() -> None:
    """/status used to iterate dicts the poll thread changed: 'dictionary changed size' (a 500)."""
    versions = iter(range(10**9))

    class Churning(Source):
        def read_state(self) -> RegistryState:  # a new canary every read, each failing to load
            return RegistryState({"champion": "0", "canary": str(next(versions) + 1)}, 0.1)

        def load(self, version: str) -> LoadedModel:
            if version != "0":
                raise RuntimeError(f"v{version} is broken")
            return LoadedModel(version, "fake", Fixed())

    follower = Follower(Churning(RegistryState({}, 0.0)), poll_s=1, retain_s=1, retry_failed_s=1e9)
    stop = threading.Event()
    errors: list[str] = []

    def poll() -> None:
        while not stop.is_set():
            follower.poll_once()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        # For 3 s, and until the dict has grown past 100 entries while being read. sleep(0) hands the GIL over
        # after each read: without it this loop can starve the poller of the follower's lock on a
        # loaded 2-core CI machine (one poll in 3 s, seen once). Reads and writes still interleave
        # at every GIL switch (1 us), which is what broke the unlocked code.
        start = time.monotonic()
        while time.monotonic() < start + 60:
            try:
                grown = len(follower.status()["refused"]) > 100
                if grown and time.monotonic() > start + 3:
                    break
            except RuntimeError as exc:
                errors.append(repr(exc))
                break
            time.sleep(0)
    finally:
        stop.set()
        poller.join(10)
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert len(follower.status()["refused"]) > 100  # the dict really grew while it was read


def test_registry_and_load_errors_are_shown_and_logged_with_secrets_masked(monkeypatch, caplog) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-8c1f2e")
    source = Source(RegistryState({"champion": "1"}, 0.0))
    source.fail_read = ConnectionError(
        "GET http://reader:hunter2@mlflow:5000/api/2.0/mlflow/registered-models/get?token=abc123 "
        "failed; sent password pw-8c1f2e"
    )
    follower = Follower(source, poll_s=1, retain_s=1, retry_failed_s=50)
    with caplog.at_level(logging.ERROR, logger="tuneloop.serve"):
        follower.poll_once()
        source.fail_read, source.fail_load = (
            None,
            OSError("Could not connect to the endpoint URL: http://reader:hunter2@minio:9000/tuneloop/model"),
        )
        follower.poll_once()
        source.fail_read = ConnectionError("http://reader:hunter2@mlflow:5000 refused pw-8c1f2e")
        follower.poll_once()
    status = follower.status()
    shown = f"{status['last_error']} {status['refused']} {caplog.text}"
    assert "registry read failed" in shown and "v1 not served" in shown and "reader:****@" in shown
    for secret in ("hunter2", "abc123", "pw-8c1f2e"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("age", "limit", "held"),
    [(None, 60.0, True), (0.0, 60.0, False), (60.0, 60.0, False), (60.5, 60.0, True), (900.0, 60.0, True)],
)
def test_canary_hold_decision(age: float | None, limit: float, held: bool) -> None:
    reason = canary_hold(age, limit)
    assert (reason is not None) is held
    if age is not None and held:
        assert f"{age:.0f} s ago" in (reason or "") and "TUNELOOP_SERVE_MAX_SYNC_AGE_S" in (reason or "")


def test_a_worker_that_cannot_read_the_registry_stops_its_canary_and_says_how_long() -> None:
    now = [0.0]
    synced: list[float] = []
    source = Source(RegistryState({"champion": "1", "canary": "2"}, 1.0))
    follower = Follower(
        source, poll_s=5, retain_s=1, retry_failed_s=50, clock=lambda: now[0], on_sync=synced.append
    )
    follower.poll_once()
    assert len(synced) == 1 and abs(synced[0] - time.time()) < 5  # wall time, for the metric
    source.fail_read = ConnectionError("registry down")
    items = [Item(f"t{i}", item_key(None, "n", i)) for i in range(20)]

    def served_by() -> set[str]:
        hold = canary_hold(follower.sync_age(), 60.0)
        out = score_items(
            follower.bundle,
            items,
            breaker=CircuitBreaker(5, 30),
            observer=_Quiet(),
            top_k=1,
            shadow_share=0.0,
            canary_open=hold is None,
        )
        return {p["model_version"] for p in out}

    now[0] = 55.0
    follower.poll_once()
    assert served_by() == {"2"} and len(synced) == 1  # 55 s: within the limit, the canary serves
    now[0] = 61.0
    follower.poll_once()
    assert served_by() == {"1"}  # 61 s without a read: the champion answers every item
    assert follower.status()["last_sync_age_s"] == 61.0
    source.fail_read = None
    follower.poll_once()
    assert served_by() == {"2"} and follower.sync_age() == 0.0 and len(synced) == 2


class _Quiet:
    def batch(self, *args: object) -> None: ...
    def predicted(self, *args: object) -> None: ...
    def error(self, *args: object) -> None: ...
    def shadow(self, *args: object) -> None: ...


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: an MLflow server that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_registry_reads_give_up_at_the_service_timeout_not_mlflows_default(
    silent_server: str, tmp_path, monkeypatch
) -> None:
    """MLflow waits 120 s per request and retries 7 times; the service sets its own, shorter bound."""
    from tuneloop.config import load_settings
    from tuneloop.serve.settings import load_serve_settings
    from tuneloop.steps.serve import RegistrySource

    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(home=tmp_path / "home", tracking_uri=silent_server)
    source = RegistrySource(settings, load_serve_settings(registry_timeout_s=1, registry_retries=0), 1)
    failed: list[BaseException] = []

    def read() -> None:
        try:
            source.read_state()
        except BaseException as exc:  # noqa: BLE001  (any failure is the answer wanted)
            failed.append(exc)

    started = time.monotonic()
    assert in_thread(read, 20), "a registry read of a silent server was still waiting after 20 s"
    assert failed and time.monotonic() - started < 20
