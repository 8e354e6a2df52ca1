"""A local circuit breaker for the canary: stop sending it items after repeated errors.

Closed: every canary item goes to the canary. After `failures` errors in a row it opens: canary
items go to the champion for `cooldown_s`. Then it is half-open: the next canary call is a trial;
success closes it, an error opens it again for another cooldown. It acts before any rollout
controller looks, and only in this worker (each worker sees its own errors).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    """Consecutive-failure breaker with a cooldown; thread-safe, clock injectable for tests."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._streak = 0
        self._opened_at: float | None = None

    def allow(self) -> bool:
        """Whether the canary may be called now (closed, or half-open after the cooldown)."""
        with self._lock:
            return self._opened_at is None or self._clock() - self._opened_at >= self.cooldown_s

    def record(self, ok: bool) -> None:
        """Count one canary call's outcome."""
        with self._lock:
            if ok:
                self._streak, self._opened_at = 0, None
                return
            self._streak += 1
            half_open = self._opened_at is not None
            if half_open or self._streak >= self.failures:
                self._opened_at = self._clock()

    @property
    def state(self) -> str:
        """closed, open or half-open (for /status)."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._clock() - self._opened_at >= self.cooldown_s else "open"
