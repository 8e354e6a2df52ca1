"""The registry follower: each worker process polls the registry and swaps one immutable bundle.

A background thread reads the aliases and the canary weight (one registry read) every `poll_s` and
assigns a new Bundle. A version it does not hold yet is downloaded, loaded and warmed in a thread
of its own, outside the poll: a slow download never holds up the next read, so a rollback written
to the registry (canary weight 0) is seen within a poll even while a new version is coming in, and
the sync age (`sync_age()`) measures the registry, not the download. A load that takes longer
than `load_timeout_s` is given up (the version counts as failed and is retried after
`retry_failed_s`); the thread, which Python cannot stop, ends at its HTTP timeouts and its model
is dropped. Requests never wait for any of it: they read whatever bundle is current.

Nothing it meets takes serving down: an unreachable registry, a version whose artifacts fail their
checksum, a model that will not load all leave the last good bundle serving, and `status()` says
what failed and when, with secrets masked (a registry URI's password, MLflow's token).

After a promotion the old champion stays in the bundle's `retained` models for `retain_s`, so
moving `champion` back is a swap in memory: no download, no cold start.

Memory (many projects in one service, serve/pool.py): a follower can be dormant. It still reads the
registry every poll (so /status, the sync age and the canary weight stay true) but holds and loads
no model. `evict()` makes it dormant and drops its models; `wake()` (a request for its project)
starts loading again. A lazy follower starts dormant: its project loads on its first request.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from tuneloop.config import mask_secrets
from tuneloop.serve.bundle import Bundle, LoadedModel

log = logging.getLogger("tuneloop.serve")

# Texts every new model scores once before it serves: the first call of a session allocates its
# buffers and the tokenizer builds its caches, ~10x a warm call; short, mid and long shapes.
WARM_TEXTS = ("hi", "my card payment was declined twice today", "where is my refund " * 8)


@dataclass(frozen=True)
class RegistryState:
    """What the registry says should serve."""

    aliases: dict[str, str]  # alias -> version
    canary_weight: float
    weight_problem: str | None = None  # a canary_weight tag that could not be read


class Source(Protocol):
    """The registry adapter the composition root supplies (tuneloop.steps.serve)."""

    def read_state(self) -> RegistryState:
        """Aliases and canary weight, from one read that takes no write lock."""
        ...

    def load(self, version: str) -> LoadedModel:
        """Download (verified), load and return `version`; raises on any problem."""
        ...


def settle_heap() -> None:
    """One full collection now, then freeze what survives out of the collector's sight.

    A worker holds millions of long-lived objects (torch, transformers, tokenizers, the models);
    every gen-2 collection walks all of them while holding the GIL. Measured with
    benchmarks/serve.py on the 2-core EPYC (INT8, concurrency 16): all 16 requests in flight
    stalled together for about 230 ms once every ~1,000 requests, which alone set p99. Frozen
    objects are skipped by collections (reference counting still frees them); unfreezing first
    lets this collection reclaim cycles of models dropped since the last load. Runs only when a
    version is loaded, so its one pause lands on a swap, not in steady serving.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class _Load:
    """One version being downloaded, loaded and warmed in its own thread."""

    version: str
    started: float
    thread: threading.Thread | None = None


class Follower:
    """Keeps `bundle` in step with the registry; `start()` runs `poll_once` every `poll_s`."""

    def __init__(
        self,
        source: Source,
        *,
        poll_s: float,
        retain_s: float,
        retry_failed_s: float,
        load_timeout_s: float = 300.0,
        warm_texts: Sequence[str] = WARM_TEXTS,
        clock: Callable[[], float] = time.monotonic,
        on_sync: Callable[[float], None] | None = None,
        lazy: bool = False,
        on_loaded: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.source = source
        self.poll_s, self.retain_s, self.retry_failed_s = poll_s, retain_s, retry_failed_s
        self.load_timeout_s = load_timeout_s
        self.warm_texts = list(warm_texts)
        self._clock = clock
        self._on_sync = on_sync  # told the wall time of each successful read (a metric)
        self.bundle = Bundle()  # read by requests without a lock: one attribute, replaced whole
        # Guards every field below; held for dict updates and a bundle assembly only, never across
        # a registry read or a load, so /status and requests never wait on the registry.
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one registry read at a time
        self._state: RegistryState | None = None
        self._synced_at: float | None = None  # clock() of the last successful read
        self._expiry: dict[str, float] = {}  # retained version -> when it is dropped
        self._failed: dict[str, tuple[float, str]] = {}  # version -> (when, why)
        self._loading: dict[str, _Load] = {}
        self._fresh: dict[str, LoadedModel] = {}  # loaded, waiting for the next assembly
        self.loads: dict[str, int] = {}  # version -> downloads+loads done (rollback proves 0 new)
        self.last_sync: str | None = None
        self._read_error: tuple[str, str] | None = None  # (message, when): the last read failed
        self._problem: tuple[str, str] | None = None  # (message, when): a wanted version not served
        self.weight_problem: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dormant = lazy  # holds and loads no model until wake()
        self.evictions = 0
        self._on_loaded = on_loaded  # told of each model installed (the pool checks its budget)

    # --- the loop ------------------------------------------------------------------------------
    def start(self) -> None:
        """Poll now and then every `poll_s` seconds in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="tuneloop-registry-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            try:
                self.poll_once(wait=False)
            except Exception:  # a bug must not end the polling thread: the sync age would freeze
                log.exception("tuneloop serve: registry poll failed")
            if self._stop.wait(self.poll_s):
                return

    def sync_age(self) -> float | None:
        """Seconds since the last successful registry read; None before the first."""
        synced = self._synced_at
        return None if synced is None else max(0.0, self._clock() - synced)

    def poll_once(self, wait: bool = True) -> Bundle:
        """One sync with the registry; returns the bundle now serving.

        Loads it starts run in their own threads; `wait` waits for them (up to `load_timeout_s`)
        before returning, as tests and a first start want. The polling thread does not wait.
        """
        with self._poll_lock:
            try:
                state = self.source.read_state()
            except Exception as exc:  # unreachable, locked, misconfigured: keep serving what we have
                message = self._mask(f"registry read failed: {exc}")
                with self._lock:
                    self._read_error = (message, _now_iso())
                log.error("tuneloop serve: %s", message)
                return self.bundle
            with self._lock:
                self._state, self._synced_at = state, self._clock()
                self.last_sync, self._read_error = _now_iso(), None
                self.weight_problem = state.weight_problem
                self._expire_loads()
                started = self._start_loads(state)
                self._assemble()
        if self._on_sync is not None:
            self._on_sync(time.time())
        if wait and started:
            for load in started:
                if load.thread is not None:
                    load.thread.join(max(0.0, load.started + self.load_timeout_s - self._clock()))
            with self._lock:
                self._expire_loads()
                self._assemble()
        return self.bundle

    # --- loading, off the poll ------------------------------------------------------------------
    def _start_loads(self, state: RegistryState) -> list[_Load]:
        """Start a load for each wanted version that is not held, loading, or failed recently."""
        held = {**self.bundle.loaded(), **self._fresh}
        started: list[_Load] = []
        if self.dormant:
            return started
        for version in {state.aliases.get("champion"), state.aliases.get("canary")} - {None}:
            assert version is not None
            if version in held or version in self._loading:
                continue
            failed = self._failed.get(version)
            if failed is not None and self._clock() - failed[0] < self.retry_failed_s:
                continue
            load = _Load(version, self._clock())
            load.thread = threading.Thread(
                target=self._load, args=(load,), name=f"tuneloop-load-v{version}", daemon=True
            )
            self._loading[version] = load
            started.append(load)
        for load in started:
            assert load.thread is not None
            load.thread.start()
        return started

    def _load(self, load: _Load) -> None:
        """Download, load and warm one version (its own thread); install it if still wanted."""
        version = load.version
        try:
            model = self.source.load(version)
            model.predictor.predict_proba(self.warm_texts)
        except Exception as exc:
            reason = self._mask(f"{type(exc).__name__}: {exc}")
            with self._lock:
                if self._loading.get(version) is not load:
                    return  # given up on already (load_timeout_s)
                del self._loading[version]
                self._failed[version] = (self._clock(), reason)
                self._assemble()
            log.error("tuneloop serve: v%s refused, the last good models keep serving: %s", version, reason)
            return
        settle_heap()
        with self._lock:
            if self._loading.get(version) is not load:
                log.warning("tuneloop serve: v%s finished loading after it was given up; dropped", version)
                return
            del self._loading[version]
            if self.dormant:  # evicted while it loaded: the next wake() loads it again
                return
            self._failed.pop(version, None)
            self.loads[version] = self.loads.get(version, 0) + 1
            self._fresh[version] = model
            self._assemble()
        log.info("tuneloop serve: v%s loaded with %s", version, model.backend)
        if self._on_loaded is not None:
            self._on_loaded(model)

    def settled(self) -> bool:
        """The registry was read and its champion, if it names one, is loaded."""
        state = self._state
        return state is not None and (
            state.aliases.get("champion") is None or self.bundle.champion is not None
        )

    def loading_champion(self) -> bool:
        """The registry names a champion that is not loaded yet and has not failed: worth waiting for."""
        state = self._state
        wanted = state.aliases.get("champion") if state is not None else None
        if wanted is None:
            return state is None  # not read yet: the first read may name one
        with self._lock:
            return self.bundle.champion is None and wanted not in self._failed

    # --- memory ---------------------------------------------------------------------------------
    def held_bytes(self) -> int:
        """Weight bytes of every model this follower holds (serving, retained, just loaded)."""
        with self._lock:
            held = {**self.bundle.loaded(), **self._fresh}
        return sum(m.nbytes for m in held.values())

    def evict(self) -> int:
        """Drop every model and load none until `wake()`; returns the weight bytes let go.

        A batch already running keeps the bundle it read until it ends; requests after this one
        see no champion and wake the follower.
        """
        with self._lock:
            held = {**self.bundle.loaded(), **self._fresh}
            self.dormant = True
            self._fresh = {}
            self._expiry.clear()
            self.bundle = Bundle(None, None, self.bundle.canary_weight, ())
            self.evictions += 1
        freed = sum(m.nbytes for m in held.values())
        del held
        settle_heap()
        return freed

    def wake(self) -> bool:
        """Load again (a dormant follower's project was asked for); True when it was dormant.

        The registry read and the loads run in a thread: the caller (the event loop) never waits.
        """
        with self._lock:
            if not self.dormant:
                return False
            self.dormant = False
        threading.Thread(
            target=self.poll_once, kwargs={"wait": False}, name="tuneloop-wake", daemon=True
        ).start()
        return True

    def _expire_loads(self) -> None:
        """Give up loads running past `load_timeout_s` (under the lock)."""
        now = self._clock()
        for version, load in list(self._loading.items()):
            if now - load.started > self.load_timeout_s:
                del self._loading[version]
                reason = (
                    f"loading took longer than {self.load_timeout_s:.0f} s (TUNELOOP_SERVE_LOAD_TIMEOUT_S); "
                    f"given up, tried again after {self.retry_failed_s:.0f} s"
                )
                self._failed[version] = (now, reason)
                log.error(
                    "tuneloop serve: v%s refused, the last good models keep serving: %s", version, reason
                )

    # --- the bundle -----------------------------------------------------------------------------
    def _assemble(self) -> None:
        """A new bundle from the last registry state and the models at hand (under the lock)."""
        state = self._state
        if state is None:
            return
        old = self.bundle
        held = {**old.loaded(), **self._fresh}
        self._fresh = {}
        wanted = state.aliases.get("champion")
        champion = held.get(wanted) if wanted else None
        if champion is None and wanted:
            champion = old.champion  # the new champion is loading or failed: the last good one serves
        canary_version = state.aliases.get("canary")
        canary = held.get(canary_version) if canary_version else None
        self._retain(old, champion)
        keep = {v for v in (champion and champion.version, canary and canary.version) if v}
        retained = tuple(m for v, m in held.items() if v in self._expiry and v not in keep)
        self.bundle = Bundle(champion, canary, state.canary_weight, retained)
        problems = [
            f"v{v} not served: {self._failed[v][1]}"
            for v in (wanted, canary_version)
            if v and v in self._failed and v not in self.bundle.loaded()
        ]
        message = "; ".join(problems) or None
        if message is None:
            self._problem = None
        elif self._problem is None or self._problem[0] != message:
            self._problem = (message, _now_iso())
            log.error("tuneloop serve: %s", message)

    def _retain(self, old: Bundle, champion: LoadedModel | None) -> None:
        """Keep a replaced champion warm for `retain_s`; forget retained models past their time."""
        now = self._clock()
        if old.champion is not None and (champion is None or champion.version != old.champion.version):
            self._expiry[old.champion.version] = now + self.retain_s
        if champion is not None:
            self._expiry.pop(champion.version, None)
        for version, until in list(self._expiry.items()):
            if until <= now:
                del self._expiry[version]

    @staticmethod
    def _mask(message: str) -> str:
        """A registry or loader error as it may be logged and shown (secrets masked)."""
        return mask_secrets(message)

    # --- what /status shows -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A consistent copy of what this worker serves and how its registry reads went."""

        def describe(model: LoadedModel | None) -> dict[str, Any] | None:
            if model is None:
                return None
            return {
                "version": model.version,
                "model": model.model,
                "backend": model.backend,
                "notes": list(model.notes),
            }

        age = self.sync_age()
        with self._lock:  # the poll and load threads change these dicts: copy them in one go
            bundle = self.bundle
            errors = [e for e in (self._read_error, self._problem) if e is not None]
            now = self._clock()
            return {
                "ready": bundle.champion is not None,
                "aliases": {"champion": describe(bundle.champion), "canary": describe(bundle.canary)},
                "canary_weight": bundle.effective_weight,
                "canary_weight_registry": bundle.canary_weight,
                "canary_weight_problem": self.weight_problem,
                "retained": [describe(m) for m in bundle.retained],
                "loads": dict(self.loads),
                "loading": {v: round(now - load.started, 1) for v, load in self._loading.items()},
                "refused": {v: why for v, (_, why) in self._failed.items()},
                "last_sync": self.last_sync,
                "last_sync_age_s": None if age is None else round(age, 1),
                "last_error": "; ".join(message for message, _ in errors) or None,
                "last_error_at": max((at for _, at in errors), default=None),
                "poll_s": self.poll_s,
                "dormant": self.dormant,
                "evictions": self.evictions,
                "held_mb": round(sum(m.nbytes for m in bundle.loaded().values()) / 1e6, 1),
            }
