"""The registry follower: each worker process polls the registry and swaps one immutable bundle.

A background thread reads the aliases and the canary weight (one registry read), loads and warms
any version it does not hold yet, then assigns a new Bundle. Requests never wait for it: they read
whatever bundle is current. Nothing it meets takes serving down: an unreachable registry, a
version whose artifacts fail their checksum, a model that will not load all leave the last good
bundle serving, and `status()` says what failed and when.

After a promotion the old champion stays in the bundle's `retained` models for `retain_s`, so
moving `champion` back is a swap in memory: no download, no cold start.
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


class Follower:
    """Keeps `bundle` in step with the registry; `start()` runs `poll_once` every `poll_s`."""

    def __init__(
        self,
        source: Source,
        *,
        poll_s: float,
        retain_s: float,
        retry_failed_s: float,
        warm_texts: Sequence[str] = WARM_TEXTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.poll_s, self.retain_s, self.retry_failed_s = poll_s, retain_s, retry_failed_s
        self.warm_texts = list(warm_texts)
        self._clock = clock
        self.bundle = Bundle()  # read by requests without a lock: one attribute, replaced whole
        self._expiry: dict[str, float] = {}  # retained version -> when it is dropped
        self._failed: dict[str, tuple[float, str]] = {}  # version -> (when, why)
        self.loads: dict[str, int] = {}  # version -> downloads+loads done (rollback proves 0 new)
        self.last_sync: str | None = None
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.weight_problem: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()

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
            self.poll_once()
            if self._stop.wait(self.poll_s):
                return

    def poll_once(self) -> Bundle:
        """One sync with the registry; returns the bundle now serving."""
        with self._poll_lock:
            try:
                state = self.source.read_state()
            except Exception as exc:  # unreachable, locked, misconfigured: keep serving what we have
                self._error(f"registry read failed: {exc}")
                return self.bundle
            self.weight_problem = state.weight_problem
            problems: list[str] = []
            champion = self._resolve(state.aliases.get("champion"), problems)
            canary = self._resolve(state.aliases.get("canary"), problems)
            old = self.bundle
            if champion is None and state.aliases.get("champion"):
                champion = old.champion  # the new champion failed: the last good one keeps serving
            self._retain(old, champion)
            keep = {v for v in (champion and champion.version, canary and canary.version) if v}
            retained = tuple(m for v, m in old.loaded().items() if v in self._expiry and v not in keep)
            self.bundle = Bundle(champion, canary, state.canary_weight, retained)
            self.last_sync = _now_iso()
            if problems:
                self._error("; ".join(problems))
            else:
                self.last_error = None
            return self.bundle

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

    def _resolve(self, version: str | None, problems: list[str]) -> LoadedModel | None:
        """The loaded model for `version`: held already, or loaded and warmed now."""
        if version is None:
            return None
        held = self.bundle.loaded().get(version)
        if held is not None:
            return held
        failed = self._failed.get(version)
        if failed is not None and self._clock() - failed[0] < self.retry_failed_s:
            problems.append(f"v{version} not served: {failed[1]}")
            return None
        try:
            model = self.source.load(version)
            model.predictor.predict_proba(self.warm_texts)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self._failed[version] = (self._clock(), reason)
            problems.append(f"v{version} not served: {reason}")
            log.error("tuneloop serve: v%s refused, the last good models keep serving: %s", version, reason)
            return None
        self._failed.pop(version, None)
        self.loads[version] = self.loads.get(version, 0) + 1
        settle_heap()
        log.info("tuneloop serve: v%s loaded with %s", version, model.backend)
        return model

    def _error(self, message: str) -> None:
        self.last_error, self.last_error_at = message, _now_iso()
        log.error("tuneloop serve: %s", message)

    # --- what /status shows -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        bundle = self.bundle

        def describe(model: LoadedModel | None) -> dict[str, Any] | None:
            if model is None:
                return None
            return {"version": model.version, "backend": model.backend, "notes": list(model.notes)}

        return {
            "ready": bundle.champion is not None,
            "aliases": {"champion": describe(bundle.champion), "canary": describe(bundle.canary)},
            "canary_weight": bundle.effective_weight,
            "canary_weight_registry": bundle.canary_weight,
            "canary_weight_problem": self.weight_problem,
            "retained": [describe(m) for m in bundle.retained],
            "loads": dict(self.loads),
            "refused": {v: why for v, (_, why) in self._failed.items()},
            "last_sync": self.last_sync,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "poll_s": self.poll_s,
        }
