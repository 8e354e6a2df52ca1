"""Score one batch of items against one bundle: routing, canary fallback, shadow scoring.

The batch reads the bundle it is given and nothing else, so a swap mid-batch changes nothing.
Each item already carries its routing key (see routing.py), because the items of a batch come
from many requests. A canary that raises is counted against the breaker and its items are
answered by the champion, so a failing canary costs its users nothing but a slower answer.

A model call must return one row per text. A backend that returns fewer (or more) rows raises
`ShortAnswer`, counted as that version's error: zipping a short answer onto the items would hand
one request's answers to another. Every item gets exactly one prediction, or the call raises.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tuneloop.serve.breaker import CircuitBreaker
from tuneloop.serve.bundle import Bundle, LoadedModel
from tuneloop.serve.routing import CANARY, CHAMPION, route, shadowed


class NotReady(RuntimeError):
    """No champion is loaded yet."""


class ShortAnswer(RuntimeError):
    """A model call returned another number of rows than it was given texts."""


@dataclass(frozen=True)
class Item:
    """One text to classify and the key that routes it."""

    text: str
    key: str


@dataclass(frozen=True)
class Fault:
    """Injected trouble for one version (settings fault_*): a canary to rehearse rollbacks with."""

    version: str | None = None
    error_rate: float = 0.0
    latency_ms: float = 0.0

    def apply(self, version: str) -> None:
        """Sleep and/or raise as configured, for `version` only; a no-op for every other version."""
        if self.version is None or version != self.version:
            return
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        if self.error_rate and random.random() < self.error_rate:
            raise RuntimeError(f"injected fault for v{version} (TUNELOOP_SERVE_FAULT_ERROR_RATE)")


NO_FAULT = Fault()


class Observer(Protocol):
    """Where scoring reports what it did (Prometheus in the service, a list in tests)."""

    def batch(self, version: str, size: int, seconds: float) -> None: ...
    def predicted(self, version: str, label: str, score: float) -> None: ...
    def error(self, version: str) -> None: ...
    def shadow(self, version: str, agreed: bool) -> None: ...


def _run(model: LoadedModel, texts: list[str], observer: Observer, fault: Fault = NO_FAULT) -> np.ndarray:
    start = time.perf_counter()
    try:
        fault.apply(model.version)  # inside the timing and the error count, as a real fault would be
        probs = model.predictor.predict_proba(texts)
        if len(probs) != len(texts):
            raise ShortAnswer(
                f"v{model.version} ({model.backend}) returned {len(probs)} rows for {len(texts)} texts"
            )
    except Exception:
        observer.error(model.version)
        raise
    observer.batch(model.version, len(texts), time.perf_counter() - start)
    return probs


def _prediction(model: LoadedModel, probs: np.ndarray, top_k: int) -> dict[str, Any]:
    order = np.argsort(-probs)[:top_k]
    top = [{"label": model.predictor.labels[i], "score": float(probs[i])} for i in order]
    return {"label": top[0]["label"], "score": top[0]["score"], "top_k": top, "model_version": model.version}


def score_items(
    bundle: Bundle,
    items: Sequence[Item],
    *,
    breaker: CircuitBreaker,
    observer: Observer,
    top_k: int,
    shadow_share: float,
    fault: Fault = NO_FAULT,
    canary_open: bool = True,
) -> list[dict[str, Any]]:
    """One prediction per item, in order, each naming the version that answered.

    `canary_open=False` sends every item to the champion (the registry is out of sight, see
    freshness.py); the breaker does the same on its own after repeated canary errors.
    """
    champion = bundle.champion
    if champion is None:
        raise NotReady("no champion is loaded yet")
    weight = bundle.effective_weight if canary_open and breaker.allow() else 0.0
    routes = [route(item.key, weight) for item in items]
    canary_idx = [i for i, r in enumerate(routes) if r == CANARY]
    out: list[dict[str, Any] | None] = [None] * len(items)
    canary = bundle.canary
    if canary is not None and canary_idx:
        try:
            probs = _run(canary, [items[i].text for i in canary_idx], observer, fault)
            breaker.record(True)
            for i, p in zip(canary_idx, probs, strict=True):
                out[i] = _prediction(canary, p, top_k)
        except Exception:
            breaker.record(False)
            for i in canary_idx:
                routes[i] = CHAMPION
    shadow_idx = [i for i in canary_idx if out[i] is not None and shadowed(items[i].key, shadow_share)]
    champion_idx = [i for i, r in enumerate(routes) if r == CHAMPION]
    needed = champion_idx + shadow_idx
    if needed:
        probs = _run(champion, [items[i].text for i in needed], observer, fault)
        for i, p in zip(champion_idx, probs[: len(champion_idx)], strict=True):
            out[i] = _prediction(champion, p, top_k)
        for i, p in zip(shadow_idx, probs[len(champion_idx) :], strict=True):
            answered = out[i]
            assert answered is not None and canary is not None
            observer.shadow(canary.version, champion.predictor.labels[int(np.argmax(p))] == answered["label"])
    done = [p for p in out if p is not None]
    if len(done) != len(items):  # unreachable while every call is checked above; never answer short
        raise ShortAnswer(f"{len(items) - len(done)} of {len(items)} items were left unanswered")
    for p in done:
        observer.predicted(p["model_version"], p["label"], p["score"])
    return done
