"""A lease lock held in the model registry itself, so it serialises processes on any host.

The lock is a registered model named `<model>.lock.<name>`. Creating a registered model is atomic in
every MLflow store (a primary key on the name in SQLite and PostgreSQL; the server forwards to one of
those), so of two processes creating the same name one gets RESOURCE_ALREADY_EXISTS: that one waits.
A file lock would only serialise processes on one machine, and the loop runs on many (Prefect
workers on Kubernetes) against one MLflow server.

Tags on the lock model say who holds it (`holder`: host/pid/random) and until when (`expires_at`,
epoch seconds). A holder renews the lease every lease/3 seconds from a background thread, so a
long critical section (a training round) keeps it while a killed holder's lock expires at most
`lease_s` after its last renewal; a waiter then breaks it. Release and break both re-read the holder
just before deleting. MLflow has no conditional delete, so a breaker that reads an expired lease and
is paused for longer than a whole lease could still delete a successor's lock; with the default
60 s lease that needs a one-minute stall between two consecutive calls. The holder notices (its
renewal finds another holder) and the `with` block then raises instead of returning quietly.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

LOCK_TAG = "tuneloop.lock"


class LockError(RuntimeError):
    """The lock could not be taken in time, or was lost while held."""


def lock_model_name(model_name: str, name: str) -> str:
    return f"{model_name}.lock.{name}"


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


def _read(client: Any, lock_name: str) -> dict[str, str] | None:
    """The lock's tags, or None when nobody holds it."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(lock_name).tags or {})
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _delete_if_holder(client: Any, lock_name: str, holder: str) -> bool:
    from mlflow.exceptions import MlflowException

    tags = _read(client, lock_name)
    if tags is None or tags.get("holder") != holder:
        return False
    try:
        client.delete_registered_model(lock_name)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
    return True


@contextlib.contextmanager
def registry_lock(
    client: Any,
    lock_name: str,
    *,
    timeout_s: float = 600.0,
    lease_s: float = 60.0,  # see Registry.lock (store.py, LEASE_S) for why 60
    poll_s: float = 0.5,
    where: str = "",
) -> Iterator[str]:
    """Hold `lock_name` for the `with` block; yields the holder id. Raises LockError on timeout."""
    from mlflow.exceptions import MlflowException

    holder = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout_s
    while True:
        now = time.time()
        try:
            client.create_registered_model(
                lock_name,
                tags={
                    LOCK_TAG: "true",
                    "holder": holder,
                    "acquired_at": f"{now:.3f}",
                    "expires_at": f"{now + lease_s:.3f}",
                },
                description="tuneloop lock (not a model): deleted when released; "
                "safe to delete by hand only if its holder process is gone.",
            )
            break
        except MlflowException as exc:
            # MLflow's SQL stores answer a duplicate name by reading the existing model back; when
            # its holder released it in between, that read says RESOURCE_DOES_NOT_EXIST (seen with
            # 8 writers on SQLite, tests/test_registry_postgres_concurrency.py): the lock is free.
            if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
                continue
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise LockError(f"taking the lock {lock_name!r}{where} failed: {exc.message}") from exc
        try:
            tags = _read(client, lock_name)
            if tags is None:
                continue  # released between our create and our read: try again at once
            expires = float(tags.get("expires_at", "0") or 0)
            if expires < time.time():
                _delete_if_holder(client, lock_name, tags.get("holder", ""))
                continue
        except MlflowException as exc:
            raise LockError(f"reading the lock {lock_name!r}{where} failed: {exc.message}") from exc
        if time.monotonic() >= deadline:
            age = time.time() - float(tags.get("acquired_at", "0") or 0)
            raise LockError(
                f"lock {lock_name!r}{where} is held by {tags.get('holder', '?')} for {age:.0f} s "
                f"(lease ends in {expires - time.time():.0f} s); waited {timeout_s:.0f} s. If that "
                "process is gone, the lock breaks itself when its lease ends, or delete the "
                f"registered model {lock_name!r}."
            )
        # Jitter keeps waiters that woke together from retrying in lockstep.
        time.sleep(poll_s * (0.5 + random.random()))

    lost = threading.Event()
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            try:
                tags = _read(client, lock_name)
                if tags is None or tags.get("holder") != holder:
                    lost.set()
                    return
                client.set_registered_model_tag(lock_name, "expires_at", f"{time.time() + lease_s:.3f}")
            except Exception:  # a transient registry error: the next renewal tries again
                continue

    renewer = threading.Thread(target=renew, name=f"renew {lock_name}", daemon=True)
    renewer.start()
    release_error: Exception | None = None
    try:
        yield holder
    finally:
        stop.set()
        renewer.join()
        try:
            released = _delete_if_holder(client, lock_name, holder)
        except MlflowException as exc:
            # Raised below when the block succeeded; if the block itself failed, its error is the
            # one to see, and the lease (at most `lease_s`) frees the lock.
            released, release_error = True, exc
    if release_error is not None:
        raise LockError(
            f"releasing the lock {lock_name!r}{where} failed ({release_error}); it frees itself when "
            f"its lease ends, within {lease_s:.0f} s"
        )
    if lost.is_set() or not released:
        raise LockError(
            f"lock {lock_name!r}{where} was lost while held (its lease of {lease_s:.0f} s ran out and "
            "another process broke it); the critical section may have overlapped with another: check "
            "the registry state before going on."
        )
