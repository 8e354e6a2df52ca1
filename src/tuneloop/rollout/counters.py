"""Per-version serving counters as plain data, and the traffic of a step with increase() semantics.

The service exports cumulative Prometheus counters labelled `model_version` (serve/metrics.py),
one set per replica. A step is judged on what the counters *gained* since it began. Gains are
taken series by series and replica by replica, as PromQL's `increase()` does, and only then summed:

- a series that went down was reset (its replica restarted), so it gained its whole new value;
  subtracting fleet-wide sums instead would hide a restart in one field and not another (the
  replica's calls vanish, three routine errors elsewhere remain: an error rate of 1.0);
- a replica seen for the first time after the step began is a baseline, not traffic (its counters
  hold its whole history);
- a histogram's buckets gain series by series, so they stay cumulative and the p95 stays defined.

Each series is also labelled `project` (one service hosts several projects, whose version numbers
collide): a controller keeps only its own project's samples (`in_project`) before anything is summed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tuneloop.config import DEFAULT_PROJECT

# One counter series of one replica: (replica, sample name, sorted label pairs).
SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]
Reading = dict[SeriesKey, float]
Sample = tuple[str, Mapping[str, str], float]


@dataclass(frozen=True)
class VersionCounters:
    """What one version did: cumulative, or gained over a step."""

    items: float = 0.0  # items answered by this version
    errors: float = 0.0  # model calls that raised
    calls: float = 0.0  # model calls that answered (the per-call latency histogram's count)
    # Per-item latency (a call's seconds / its items, one observation per item), cumulative buckets:
    # le (seconds) -> items. Per item because the two versions' calls carry different batch sizes.
    item_latency_buckets: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)  # label -> items
    shadow_agreed: float = 0.0  # canary items the champion also scored, and agreed on
    shadow_disagreed: float = 0.0
    feedback_correct: float = 0.0
    feedback_wrong: float = 0.0

    @property
    def error_rate(self) -> float | None:
        """Failed model calls / all model calls (None before any call, or with no call counts)."""
        total = self.errors + self.calls
        return self.errors / total if total else None

    @property
    def latency_items(self) -> float:
        """Items in the per-item latency histogram (its +Inf bucket)."""
        return max(self.item_latency_buckets.values(), default=0.0)

    @property
    def shadowed(self) -> float:
        return self.shadow_agreed + self.shadow_disagreed

    @property
    def feedback(self) -> float:
        return self.feedback_correct + self.feedback_wrong

    @property
    def feedback_accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback if self.feedback else None

    def p95_ms(self) -> float | None:
        """95th percentile of model time per item, ms (None without a per-item latency series)."""
        return quantile_ms(self.item_latency_buckets, 0.95)


def quantile_ms(buckets: Mapping[str, float], q: float) -> float | None:
    """The q-quantile in ms from cumulative histogram buckets, as PromQL's histogram_quantile does.

    Linear interpolation inside the bucket that holds the rank. The service's buckets double
    (1, 2, 4 ... 4096 ms), so the answer is within a factor of 2 of the truth at worst; a rank in
    the +Inf bucket answers the largest finite bound (nothing better is known). Counts are made
    monotone first (a running maximum, as PromQL does): an extrapolated `increase()` per bucket can
    dip by a fraction of an item.
    """
    bounds = sorted((float(le), n) for le, n in buckets.items())
    running = 0.0
    bounds = [(bound, running := max(running, n)) for bound, n in bounds]
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in bounds:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound * 1000.0
            width = count - lower_count
            share = (rank - lower_count) / width if width else 1.0
            return (lower_bound + (bound - lower_bound) * share) * 1000.0
        lower_bound, lower_count = bound, count
    return lower_bound * 1000.0


def total_variation(a: Mapping[str, float], b: Mapping[str, float]) -> float | None:
    """Half the L1 distance between two label-count mixes as shares (None if either is empty)."""
    na, nb = sum(a.values()), sum(b.values())
    if na <= 0 or nb <= 0:
        return None
    labels = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0.0) / na - b.get(k, 0.0) / nb) for k in labels)


# Counter samples that add to a scalar field: sample name -> field (or a label that splits it).
_SCALARS = {
    "tuneloop_items_total": "items",
    "tuneloop_model_errors_total": "errors",
    "tuneloop_model_seconds_count": "calls",
}
_SPLIT = {  # sample name -> (label, field when "true", field otherwise)
    "tuneloop_shadow_total": ("agreed", "shadow_agreed", "shadow_disagreed"),
    "tuneloop_feedback_total": ("correct", "feedback_correct", "feedback_wrong"),
}
ITEM_BUCKETS = "tuneloop_item_seconds_bucket"
PREDICTED = "tuneloop_predicted_total"
SERIES = (*_SCALARS, *_SPLIT, ITEM_BUCKETS, PREDICTED)  # every sample name the canary reads


def in_project(labels: Mapping[str, str], project: str) -> bool:
    """Whether a sample is `project`'s: by its `project` label, and one without the label (a service
    from before projects) is the default project's, so an old service is still judged."""
    return labels.get("project", DEFAULT_PROJECT) == project


def counters_from_samples(samples: Iterable[Sample]) -> dict[str, VersionCounters]:
    """Sum Prometheus samples of the tuneloop_* series into per-version counters.

    Both sources hand over (sample name, labels, value); summing makes several workers' or
    replicas' series (or PromQL's already-summed ones) one figure per version.
    """
    scalars: dict[str, dict[str, float]] = {}
    buckets: dict[str, dict[str, float]] = {}
    predicted: dict[str, dict[str, float]] = {}
    for name, labels, value in samples:
        version = labels.get("model_version")
        if version is None or math.isnan(value):
            continue
        row = scalars.setdefault(version, {})
        if name in _SCALARS:
            key = _SCALARS[name]
        elif name in _SPLIT:
            label, yes, no = _SPLIT[name]
            key = yes if labels.get(label) == "true" else no
        elif name == ITEM_BUCKETS:
            le = repr(float(labels.get("le", "+Inf")))  # "0.001" / "1.0e-03" / "+Inf": one spelling
            table = buckets.setdefault(version, {})
            table[le] = table.get(le, 0.0) + value
            continue
        elif name == PREDICTED:
            table = predicted.setdefault(version, {})
            label = labels.get("label", "?")
            table[label] = table.get(label, 0.0) + value
            continue
        else:
            continue
        row[key] = row.get(key, 0.0) + value
    return {
        v: VersionCounters(item_latency_buckets=buckets.get(v, {}), predicted=predicted.get(v, {}), **row)
        for v, row in scalars.items()
    }


def reading_from_samples(replica: str, samples: Iterable[Sample]) -> Reading:
    """One replica's tuneloop_* samples keyed by series, so readings can be compared series by series."""
    return {
        (replica, name, tuple(sorted(labels.items()))): value
        for name, labels, value in samples
        if name in SERIES and not math.isnan(value)
    }


def reading_counters(reading: Reading) -> dict[str, VersionCounters]:
    """Per-version counters of a reading (every replica's series summed)."""
    return counters_from_samples((name, dict(labels), value) for (_, name, labels), value in reading.items())


class CounterWindow:
    """The traffic since a window (a canary step) began, gained series by series over readings.

    `add` takes each new reading and returns the per-version counters gained since the first one.
    Gains are accumulated reading by reading, so a replica that restarts and climbs back above
    its old value between two readings loses only what it served before the restart in that tick.
    """

    def __init__(self) -> None:
        self.last: Reading = {}  # the newest value of every series seen, kept when a replica goes quiet
        self.replicas: set[str] = set()  # replicas whose baseline is known
        self.gained: Reading = {}

    def add(self, reading: Reading) -> dict[str, VersionCounters]:
        """Fold in a new reading; the per-version counters gained since the window began."""
        for key, value in reading.items():
            if key[0] in self.replicas:
                before = self.last.get(key, 0.0)  # a series new on a known replica began at 0
                gain = value - before if value >= before else value  # went down: a reset
                self.gained[key] = self.gained.get(key, 0.0) + gain
        self.replicas |= {key[0] for key in reading}
        self.last.update(reading)
        return reading_counters(self.gained)
