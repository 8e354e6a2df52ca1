"""Registry.lock: a lease lock kept in the registry, so real processes on a shared store serialise.

Two OS processes share one SQLite store (what two Prefect workers share through an MLflow server);
each records when it enters and leaves its critical section, and no two sections may overlap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneloop.config import load_settings
from tuneloop.registry.store import Registry, RegistryError

WORKER = """
import sys, time
from tuneloop.config import load_settings
from tuneloop.registry.store import Registry

home, log = sys.argv[1], sys.argv[2]
rounds, hold, lease = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
registry = Registry(load_settings(home=home))
print("ready", flush=True)
for _ in range(rounds):
    with registry.lock("aliases", timeout_s=60, lease_s=lease):
        with open(log, "a") as handle:
            handle.write(f"enter {time.time():.6f}\\n")
        time.sleep(hold)
        with open(log, "a") as handle:
            handle.write(f"leave {time.time():.6f}\\n")
"""


def _spawn(home: Path, log: Path, rounds: int, hold: float, lease: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(home), str(log), str(rounds), str(hold), str(lease)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_never_overlap_in_the_critical_section(tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "log.txt"
    Registry(load_settings(home=home)).ensure_model()  # create the store once, before the race
    workers = [_spawn(home, log, rounds=4, hold=0.2, lease=60) for _ in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr[-2000:]
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 16
    # Serialised means the log alternates enter/leave: an overlap shows as two enters in a row.
    assert [kind for kind, _ in events] == ["enter", "leave"] * 8
    assert [float(t) for _, t in events] == sorted(float(t) for _, t in events)
    # Released locks leave no registered model behind.
    names = [m.name for m in Registry(load_settings(home=home)).client.search_registered_models()]
    assert names == ["tuneloop-intent"]


def test_a_killed_holders_lock_is_broken_after_its_lease(tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "log.txt"
    registry = Registry(load_settings(home=home))
    registry.ensure_model()
    holder = _spawn(home, log, rounds=1, hold=3600, lease=3)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log.exists(), "the holder never entered its critical section"
        held = pytest.raises(RegistryError, match=r"held by .*/\d+/.* for \d+ s")
        with held as caught, registry.lock("aliases", timeout_s=0.5, lease_s=30):
            pass
        assert str(holder.pid) in str(caught.value)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        started = time.monotonic()
        with registry.lock("aliases", timeout_s=30, lease_s=30) as me:
            waited = time.monotonic() - started
            tags = registry.client.get_registered_model("tuneloop-intent.lock.aliases").tags
            assert tags["holder"] == me and str(os.getpid()) in me
        # The dead holder renewed every lease/3 = 1 s, so its lease ended at most 3 s after the kill.
        assert waited <= 3 + 2
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_lost_lease_makes_the_with_block_fail_loudly(tmp_path: Path) -> None:
    registry = Registry(load_settings(home=tmp_path / "home"))
    registry.ensure_model()
    lock = "tuneloop-intent.lock.aliases"
    with pytest.raises(RegistryError, match="was lost while held"), registry.lock("aliases", lease_s=60):
        # Another process broke the lock (as a waiter does once a lease has run out).
        registry.client.delete_registered_model(lock)
        registry.client.create_registered_model(lock, tags={"holder": "other/1/x", "expires_at": "9e9"})
    assert registry.client.get_registered_model(lock).tags["holder"] == "other/1/x"  # theirs, kept


def test_an_error_inside_the_block_passes_through_and_the_lock_is_released(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    registry = Registry(load_settings(home=tmp_path / "home"))
    registry.ensure_model()
    with pytest.raises(MlflowException, match="not found"), registry.lock("aliases"):
        registry.client.get_registered_model("no-such-model")
    with registry.lock("aliases", timeout_s=0.5):
        pass
