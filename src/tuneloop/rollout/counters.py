"""Per-version serving counters as plain data, and the figures a canary step is judged on.

The service exports cumulative Prometheus counters labelled `model_version` (serve/metrics.py).
Both metric sources (sources.py) reduce what they read to `VersionCounters`; a step is judged on
`after - before`, the traffic since the step began, because the counters only ever grow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


def _minus(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    # A replica that restarted starts its counters from 0 again, so a key can shrink; clamp at 0
    # rather than report negative traffic (that replica's traffic before the restart is lost).
    return {k: max(v - b.get(k, 0.0), 0.0) for k, v in a.items()}


@dataclass(frozen=True)
class VersionCounters:
    """What one version did, cumulative (or a delta of two readings)."""

    items: float = 0.0  # items answered by this version
    errors: float = 0.0  # model calls that raised
    calls: float = 0.0  # model calls that answered (the latency histogram's count)
    latency_buckets: dict[str, float] = field(default_factory=dict)  # le (seconds) -> cumulative
    predicted: dict[str, float] = field(default_factory=dict)  # label -> items
    shadow_agreed: float = 0.0  # canary items the champion also scored, and agreed on
    shadow_disagreed: float = 0.0
    feedback_correct: float = 0.0
    feedback_wrong: float = 0.0

    def minus(self, before: VersionCounters) -> VersionCounters:
        """The traffic between `before` and this reading."""
        return VersionCounters(
            items=max(self.items - before.items, 0.0),
            errors=max(self.errors - before.errors, 0.0),
            calls=max(self.calls - before.calls, 0.0),
            latency_buckets=_minus(self.latency_buckets, before.latency_buckets),
            predicted=_minus(self.predicted, before.predicted),
            shadow_agreed=max(self.shadow_agreed - before.shadow_agreed, 0.0),
            shadow_disagreed=max(self.shadow_disagreed - before.shadow_disagreed, 0.0),
            feedback_correct=max(self.feedback_correct - before.feedback_correct, 0.0),
            feedback_wrong=max(self.feedback_wrong - before.feedback_wrong, 0.0),
        )

    @property
    def error_rate(self) -> float | None:
        """Failed model calls / all model calls (None before any call)."""
        total = self.errors + self.calls
        return self.errors / total if total else None

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
        return quantile_ms(self.latency_buckets, 0.95)


def diff(
    after: Mapping[str, VersionCounters], before: Mapping[str, VersionCounters]
) -> dict[str, VersionCounters]:
    """Per-version deltas; a version absent before counts from zero."""
    return {v: c.minus(before.get(v, VersionCounters())) for v, c in after.items()}


def quantile_ms(buckets: Mapping[str, float], q: float) -> float | None:
    """The q-quantile in ms from cumulative histogram buckets, as PromQL's histogram_quantile does.

    Linear interpolation inside the bucket that holds the rank. The service's buckets double
    (1, 2, 4 ... 4096 ms), so the answer is within a factor of 2 of the truth at worst; a rank in
    the +Inf bucket answers the largest finite bound (nothing better is known).
    """
    bounds = sorted((float(le), n) for le, n in buckets.items())
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


def counters_from_samples(
    samples: Iterable[tuple[str, Mapping[str, str], float]],
) -> dict[str, VersionCounters]:
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
        elif name == "tuneloop_model_seconds_bucket":
            le = repr(float(labels.get("le", "+Inf")))  # "0.001" / "1.0e-03" / "+Inf": one spelling
            table = buckets.setdefault(version, {})
            table[le] = table.get(le, 0.0) + value
            continue
        elif name == "tuneloop_predicted_total":
            table = predicted.setdefault(version, {})
            label = labels.get("label", "?")
            table[label] = table.get(label, 0.0) + value
            continue
        else:
            continue
        row[key] = row.get(key, 0.0) + value
    return {
        v: VersionCounters(latency_buckets=buckets.get(v, {}), predicted=predicted.get(v, {}), **row)
        for v, row in scalars.items()
    }
