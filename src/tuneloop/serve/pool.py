"""Many projects' models in one worker under a memory budget: load on demand, evict the least used.

Each project served has its own registry follower (follower.py). With a budget
(`TUNELOOP_SERVE_MEMORY_MB` > 0), a project that is not pinned starts dormant and loads on its
first request; after any load, while the weights held exceed the budget, the project asked for
least recently is evicted (its follower drops its models, and loads them again on its next
request: a cold load). Pinned projects (`TUNELOOP_SERVE_PINNED`, default every project) load at
start and are never evicted: their champions always answer warm. The unit is a project (its
champion, canary and retained models together): a canary evicted apart from its champion would
stall that project's rollout. Without a budget every project loads at start, as one project did.

The budget counts weight bytes (LoadedModel.nbytes: the ONNX graph or the parameters), not the
process's resident memory, which adds each session's arena and the tokenizer; the ratio of the two
is measured by benchmarks/multitenant.py. The decision (`plan_evictions`) is a pure function.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("tuneloop.serve")


@dataclass(frozen=True)
class Resident:
    """One project's models as the budget sees them."""

    project: str
    nbytes: int
    last_used: float  # when a request last asked for the project (monotonic seconds)
    pinned: bool


def plan_evictions(residents: Sequence[Resident], budget_bytes: int, spare: str | None = None) -> list[str]:
    """Projects to evict, least recently used first, until the rest fit `budget_bytes`.

    Never a pinned project, nor `spare` (the one just loaded or asked for), nor one holding nothing.
    When pinned projects alone exceed the budget the answer evicts every other one and the rest
    stays over: pins win over the budget (the service says so in /status).
    """
    total = sum(r.nbytes for r in residents)
    chosen: list[str] = []
    for resident in sorted(residents, key=lambda r: r.last_used):
        if total <= budget_bytes:
            break
        if resident.pinned or resident.project == spare or resident.nbytes == 0:
            continue
        chosen.append(resident.project)
        total -= resident.nbytes
    return chosen


class Held(Protocol):
    """What the pool needs of a follower."""

    dormant: bool
    bundle: Any

    def held_bytes(self) -> int: ...

    def evict(self) -> int: ...

    def wake(self) -> bool: ...

    def loading_champion(self) -> bool: ...


class ModelPool:
    """Tracks use of each project's follower and keeps their weights under the budget."""

    def __init__(
        self,
        followers: Mapping[str, Held],
        budget_bytes: int,
        pinned: frozenset[str],
        on_evict: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.followers = dict(followers)
        self.budget_bytes, self.pinned = budget_bytes, pinned
        self._on_evict = on_evict  # (project, bytes freed): a metric
        self._clock = clock
        self._lock = threading.Lock()  # loads finish in follower threads; requests touch on the loop
        self.last_used: dict[str, float] = dict.fromkeys(self.followers, 0.0)

    def touch(self, project: str) -> None:
        self.last_used[project] = self._clock()

    def enforce(self, spare: str | None = None) -> list[str]:
        """Evict what `plan_evictions` says (called after each load); returns the projects evicted."""
        if self.budget_bytes <= 0:
            return []
        with self._lock:
            residents = [
                Resident(name, f.held_bytes(), self.last_used.get(name, 0.0), name in self.pinned)
                for name, f in self.followers.items()
            ]
            chosen = plan_evictions(residents, self.budget_bytes, spare)
            for name in chosen:
                freed = self.followers[name].evict()
                log.info(
                    "tuneloop serve: project %s evicted (%.1f MB) to stay under the budget", name, freed / 1e6
                )
                if self._on_evict is not None:
                    self._on_evict(name, freed)
        return chosen

    async def ready(self, project: str, wait_s: float) -> bool:
        """Wake `project` if it is dormant and wait up to `wait_s` for its champion to load; False
        when it is still loading then. True at once when there is nothing to wait for (a champion
        at hand, none in the registry, or one that failed: the scorer says why it cannot answer)."""
        follower = self.followers[project]
        self.touch(project)
        if follower.bundle.champion is not None:
            return True
        follower.wake()
        deadline = self._clock() + wait_s
        while self._clock() < deadline:
            await asyncio.sleep(0.02)
            if follower.bundle.champion is not None or not follower.loading_champion():
                return True
        return False

    def describe(self) -> dict[str, Any]:
        """For /status: the budget, what each project holds, and whether pins keep it over."""
        held = {name: f.held_bytes() for name, f in self.followers.items()}
        total = sum(held.values())
        return {
            "budget_mb": round(self.budget_bytes / 1e6, 1) if self.budget_bytes > 0 else None,
            "held_mb": round(total / 1e6, 1),
            "over_budget": self.budget_bytes > 0 and total > self.budget_bytes,
            "pinned": sorted(self.pinned),
            "projects": {name: round(n / 1e6, 1) for name, n in held.items()},
        }
